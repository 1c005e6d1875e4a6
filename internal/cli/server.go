package cli

import (
	"os"

	"github.com/spf13/cobra"

	"github.com/wrenn-dev/wrenn/internal/config"
	"github.com/wrenn-dev/wrenn/internal/controlplane/app"
)

func newServerCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "server",
		Short: "Run the control plane (REST API, WebSocket streams, OpenAPI docs)",
		Long: `Run the control plane. Configuration comes from environment variables
(and a .env file): DATABASE_URL, REDIS_URL and WRENN_JWT_SECRET are required;
see the README for the full table.`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := config.LoadControlPlane(os.Getenv)
			if err != nil {
				return err
			}
			logger := newLogger(cmd.ErrOrStderr(), cfg.Log)
			return app.Run(cmd.Context(), cfg, logger, nil)
		},
	}
}
