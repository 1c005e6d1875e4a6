package cli

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/wrenn-dev/wrenn/internal/agent/images"
)

func newImagesCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "images",
		Short: "Build and inspect VM images (kernel, root filesystems) under WRENN_DIR",
		Args:  noArgs,
		RunE: func(*cobra.Command, []string) error {
			return usageError{errors.New("images needs a subcommand: build or status")}
		},
	}
	var envd string
	var verbose, base bool
	build := &cobra.Command{
		Use:   "build",
		Short: "Build the microVM kernel and the minimal and base root filesystems (cached)",
		Long: `Build what is missing or out of date under WRENN_DIR (default /var/lib/wrenn):
the microVM kernel from Debian's linux-source-6.1 (about 5 minutes on 2 cores,
once), the minimal root filesystem (busybox, bash, envd, CA certificates) and
the base template E2B's SDKs start by default: Debian with user "user"
(passwordless sudo), bash, python3, git, curl and CA certificates, installed
by mmdebstrap from deb.debian.org (a few minutes, once per recipe; a new envd
only repacks the cached tree). A second run with the same inputs does nothing.`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if envd == "" {
				return usageError{errors.New("--envd is required: a static envd binary (make build puts one in bin/envd)")}
			}
			abs, err := filepath.Abs(envd)
			if err != nil {
				return err
			}
			if _, err := os.Stat(abs); err != nil {
				return fmt.Errorf("--envd: %w", err)
			}
			// Progress goes to stderr, one line per step; tool output only with -v.
			logger := slog.New(slog.NewTextHandler(cmd.ErrOrStderr(), nil))
			cfg := images.Config{WrennDir: images.DirFromEnv(), EnvdPath: abs, Logger: logger, Base: base}
			if verbose {
				cfg.Output = cmd.ErrOrStderr()
			}
			res, err := images.NewBuilder(cfg).Build(cmd.Context())
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "kernel: %s (%s)\nrootfs: %s (%s)\n",
				res.KernelPath, builtOrCached(res.KernelBuilt), res.RootfsPath, builtOrCached(res.RootfsBuilt))
			if base {
				fmt.Fprintf(cmd.OutOrStdout(), "base: %s (%s)\n", res.BasePath, builtOrCached(res.BaseBuilt))
			}
			return nil
		},
	}
	build.Flags().StringVar(&envd, "envd", "", "path of the static envd binary to install into the root filesystem")
	build.Flags().BoolVarP(&verbose, "verbose", "v", false, "show the output of make, mmdebstrap and mkfs")
	build.Flags().BoolVar(&base, "base", true, "also build the base template (Debian; needs root, mmdebstrap and deb.debian.org once)")
	status := &cobra.Command{
		Use:   "status",
		Short: "Show which images are installed",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			st, err := images.Status(images.DirFromEnv())
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "WRENN_DIR: %s\n", st.Dir)
			if st.Base.Present {
				fmt.Fprintf(cmd.OutOrStdout(), "base template: %s\n", st.Base.RealPath)
			} else {
				fmt.Fprintln(cmd.OutOrStdout(), "base template: not built (optional; `wrenn images build` builds it)")
			}
			if st.Ready() {
				fmt.Fprintln(cmd.OutOrStdout(), "images: ready")
				return nil
			}
			for _, m := range st.Missing {
				fmt.Fprintf(cmd.OutOrStdout(), "missing: %s\n", m)
			}
			return st.Err()
		},
	}
	cmd.AddCommand(build, status)
	return cmd
}

func builtOrCached(built bool) string {
	if built {
		return "built"
	}
	return "cached"
}
