package cli

import (
	"errors"

	"github.com/spf13/cobra"
)

func newAgentCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "agent",
		Short: "Run the host agent (boots sandboxes as microVMs)",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return errors.New("agent: WIP")
		},
	}
}
