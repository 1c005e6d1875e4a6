package cli

import (
	"errors"

	"github.com/spf13/cobra"
)

func newImagesCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "images",
		Short: "Build and inspect VM images (kernel, root filesystems)",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return errors.New("images: WIP")
		},
	}
}
