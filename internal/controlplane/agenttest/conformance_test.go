package agenttest_test

import (
	"net/http"
	"testing"

	"github.com/wrenn-dev/wrenn/internal/agentconformance"
	"github.com/wrenn-dev/wrenn/internal/controlplane/agenttest"
	"github.com/wrenn-dev/wrenn/proto/hostagent/v1/hostagentv1connect"
)

// The fake must pass the same suite as the real agent server
// (internal/agent/server's TestConformance), or control plane tests would
// be checking behaviour no real agent has.
func TestConformance(t *testing.T) {
	a := agenttest.New()
	if err := a.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(a.Close)
	agentconformance.Run(t, hostagentv1connect.NewHostAgentServiceClient(http.DefaultClient, a.URL), agentconformance.Options{})
}
