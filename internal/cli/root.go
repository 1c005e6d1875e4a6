// Package cli is the `wrenn` command line: every server role (server,
// agent, dev), the operator tools (migrate, images, version) and the user
// commands that drive a platform (login, sandbox, snapshot, template, keys).
package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/joho/godotenv"
	"github.com/spf13/cobra"

	"github.com/wrenn-dev/wrenn/internal/config"
)

// ExitUsage is the exit code for unknown commands and flags.
const ExitUsage = 2

// usageError marks errors that come from how the command was called.
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

// Main runs the CLI with args and returns the process exit code.
func Main(args []string, stdout, stderr io.Writer) int {
	// .env is optional; variables already set win over it.
	if err := godotenv.Load(); err != nil && !errors.Is(err, os.ErrNotExist) {
		fmt.Fprintf(stderr, "wrenn: read .env: %v\n", err)
		return 1
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	root := newRoot(stdout, stderr)
	root.SetArgs(args)
	cmd, err := root.ExecuteContextC(ctx)
	if err == nil {
		return 0
	}
	var ec exitCodeError
	if errors.As(err, &ec) {
		return ec.code
	}
	var ue usageError
	if errors.As(err, &ue) || isCobraUsageError(err) {
		if cmd == nil {
			cmd = root
		}
		fmt.Fprintf(stderr, "wrenn: %v\n\n%s", err, cmd.UsageString())
		return ExitUsage
	}
	// The SDK's errors carry the same prefix.
	fmt.Fprintf(stderr, "wrenn: %s\n", strings.TrimPrefix(err.Error(), "wrenn: "))
	return 1
}

func newRoot(stdout, stderr io.Writer) *cobra.Command {
	root := &cobra.Command{
		Use:           "wrenn",
		Short:         "Wrenn runs untrusted code in microVM sandboxes",
		SilenceErrors: true,
		SilenceUsage:  true,
		Args:          noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return cmd.Help()
		},
	}
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })
	root.AddCommand(
		newServerCmd(),
		newAgentCmd(),
		newDevCmd(),
		newMigrateCmd(),
		newImagesCmd(),
		newCACmd(),
		newVersionCmd(),
	)
	// The commands that drive a platform (sdk/go underneath).
	uf := &userFlags{}
	for _, cmd := range []*cobra.Command{newLoginCmd(uf), newLogoutCmd(uf), newSandboxCmd(uf), newSnapshotCmd(uf), newTemplateCmd(uf), newKeysCmd(uf)} {
		root.AddCommand(userCommand(uf, cmd))
	}
	return root
}

// noArgs rejects positional arguments and unknown subcommands as usage errors.
func noArgs(cmd *cobra.Command, args []string) error {
	if len(args) > 0 {
		return usageError{fmt.Errorf("unknown command %q for %q", args[0], cmd.CommandPath())}
	}
	return nil
}

func isCobraUsageError(err error) bool {
	msg := err.Error()
	for _, prefix := range []string{"unknown command", "unknown flag", "unknown shorthand flag", "accepts ", "requires at least"} {
		if len(msg) >= len(prefix) && msg[:len(prefix)] == prefix {
			return true
		}
	}
	return false
}

// newLogger builds the process logger from configuration.
func newLogger(w io.Writer, cfg config.Log) *slog.Logger {
	var level slog.Level
	_ = level.UnmarshalText([]byte(cfg.Level))
	opts := &slog.HandlerOptions{Level: level}
	if cfg.Format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}
