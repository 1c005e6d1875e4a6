package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/wrenn-dev/wrenn/sdk/go/wrenn"
)

func newSandboxShellCmd(f *userFlags) *cobra.Command {
	var opts wrenn.PtyOptions
	cmd := &cobra.Command{
		Use:   "shell ID",
		Short: "Open an interactive terminal in a sandbox; exits with the shell's exit code",
		Long: `Open an interactive terminal (a PTY) in a sandbox, in this terminal: it is
put in raw mode, follows this window's size, and is restored on any exit.`,
		Example: `  wrenn sandbox shell sb-abc123
  wrenn sandbox shell sb-abc123 --cmd /bin/bash --cwd /tmp`,
		Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := f.client()
			if err != nil {
				return err
			}
			return runShell(cmd.Context(), c.Sandbox(args[0]), opts, cmd.InOrStdin(), cmd.OutOrStdout())
		},
	}
	cmd.Flags().StringVar(&opts.Cmd, "cmd", "", "program to run (default: the login shell)")
	cmd.Flags().StringVar(&opts.Cwd, "cwd", "", "working directory")
	return cmd
}

// runShell connects the local terminal to a sandbox terminal until it
// exits; the local terminal's mode is restored however this returns.
func runShell(ctx context.Context, sb *wrenn.Sandbox, opts wrenn.PtyOptions, in io.Reader, out io.Writer) error {
	inFile, _ := in.(*os.File)
	tty := inFile != nil && term.IsTerminal(int(inFile.Fd()))
	size := func() (uint16, uint16, bool) {
		if !tty {
			return 0, 0, false
		}
		w, h, err := term.GetSize(int(inFile.Fd()))
		if err != nil || w <= 0 || h <= 0 {
			return 0, 0, false
		}
		return uint16(w), uint16(h), true
	}
	if w, h, ok := size(); ok {
		opts.Cols, opts.Rows = w, h
	}
	t, err := sb.Shell(ctx, opts)
	if err != nil {
		return err
	}
	defer t.Close()
	if tty {
		old, err := term.MakeRaw(int(inFile.Fd()))
		if err != nil {
			return fmt.Errorf("put the terminal in raw mode: %w", err)
		}
		defer func() { _ = term.Restore(int(inFile.Fd()), old) }()
		winch := make(chan os.Signal, 1)
		signal.Notify(winch, syscall.SIGWINCH)
		defer signal.Stop(winch)
		go func() {
			for range winch {
				if w, h, ok := size(); ok {
					_ = t.Resize(ctx, w, h)
				}
			}
		}()
	}
	// SIGHUP (the window closed) ends the session like SIGTERM.
	ctx, stop := signal.NotifyContext(ctx, syscall.SIGHUP)
	defer stop()
	go func() { _, _ = io.Copy(t, in) }()
	copied := make(chan error, 1)
	go func() {
		_, err := io.Copy(out, t)
		copied <- err
	}()
	var copyErr error
	select {
	case copyErr = <-copied:
	case <-ctx.Done():
		return fmt.Errorf("the shell was interrupted: %w", ctx.Err())
	}
	st, err := t.Wait(ctx)
	if err != nil {
		if errors.Is(err, wrenn.ErrConnectionLost) || copyErr != nil {
			return fmt.Errorf("the connection to the shell was lost: %w", err)
		}
		return err
	}
	if st.ExitCode != 0 {
		return exitCodeError{st.ExitCode}
	}
	return nil
}
