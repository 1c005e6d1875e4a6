package cli

import (
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/wrenn-dev/wrenn/internal/pki"
)

func newCACmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "ca",
		Short: "Manage the internal certificate authority of control plane ↔ agent mTLS",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return usageError{fmt.Errorf("%s needs a subcommand: init", cmd.CommandPath())}
		},
	}
	var dir string
	initCmd := &cobra.Command{
		Use:   "init",
		Short: "Write a new ECDSA P-256 CA (ca.crt, and ca.key with mode 0600) into --dir",
		Long: `Write a new internal CA into --dir: ca.crt (mode 0644) and ca.key (mode
0600). Existing files are never replaced. Point the control plane at them
with WRENN_CA_CERT and WRENN_CA_KEY (a file path or the PEM text itself).`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if dir == "" {
				return usageError{fmt.Errorf("--dir is required")}
			}
			certPath, keyPath, err := pki.WriteCA(dir, time.Now())
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "WRENN_CA_CERT=%s\nWRENN_CA_KEY=%s\n", certPath, keyPath)
			return nil
		},
	}
	initCmd.Flags().StringVar(&dir, "dir", "", "directory to write ca.crt and ca.key into")
	cmd.AddCommand(initCmd)
	return cmd
}
