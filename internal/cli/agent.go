package cli

import (
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/wrenn-dev/wrenn/internal/agent/agentapp"
	"github.com/wrenn-dev/wrenn/internal/config"
)

func newAgentCmd() *cobra.Command {
	var reg struct {
		token, address string
		cpURLs         []string
	}
	cmd := &cobra.Command{
		Use:   "agent",
		Short: "Run the host agent (boots sandboxes as microVMs)",
		Long: `Run the host agent: it boots sandboxes as microVMs and serves the
HostAgentService (Connect RPC, HTTP/1.1 and h2c) on WRENN_AGENT_LISTEN_ADDR.
It needs root (network namespaces, nftables) and the images under WRENN_DIR
(run "wrenn images build" first). Running sandboxes survive an agent restart:
the next agent process re-adopts them.`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := config.LoadAgent(withFlags(os.Getenv, map[string]string{
				"WRENN_REGISTER_TOKEN": reg.token, "WRENN_AGENT_ADDRESS": reg.address, "WRENN_CP_URL": strings.Join(reg.cpURLs, ",")}))
			if err != nil {
				return err
			}
			logger := newLogger(cmd.ErrOrStderr(), cfg.Log)
			return agentapp.Run(cmd.Context(), cfg, logger)
		},
	}
	f := cmd.Flags()
	f.StringVar(&reg.token, "register", "", "one-time registration token from POST /v1/hosts (WRENN_REGISTER_TOKEN)")
	f.StringVar(&reg.address, "address", "", "host:port where the control plane reaches this agent (WRENN_AGENT_ADDRESS)")
	f.StringSliceVar(&reg.cpURLs, "cp-url", nil, "control plane URL, e.g. http://cp:8000; repeat or comma-separate for several replicas, tried in order with failover (WRENN_CP_URL)")
	return cmd
}

// withFlags lets non-empty flag values override their environment variables.
func withFlags(get config.Getenv, flags map[string]string) config.Getenv {
	return func(name string) string {
		if v := flags[name]; v != "" {
			return v
		}
		return get(name)
	}
}
