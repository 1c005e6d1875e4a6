package agentapp

import (
	"strings"
	"testing"
)

func TestPlainListenAddr(t *testing.T) {
	tests := []struct {
		addr     string
		insecure bool
		want     string
		wantErr  bool
	}{
		{addr: ":9090", want: "127.0.0.1:9090"},
		{addr: "0.0.0.0:9090", want: "127.0.0.1:9090"},
		{addr: "[::]:9090", want: "[::1]:9090"},
		{addr: "127.0.0.1:9090", want: "127.0.0.1:9090"},
		{addr: "127.0.0.2:0", want: "127.0.0.2:0"},
		{addr: "[::1]:9090", want: "[::1]:9090"},
		{addr: "localhost:9090", want: "localhost:9090"},
		{addr: "10.0.0.5:9090", wantErr: true},
		{addr: "agent.example:9090", wantErr: true},
		{addr: "10.0.0.5:9090", insecure: true, want: "10.0.0.5:9090"},
		{addr: ":9090", insecure: true, want: ":9090"},
	}
	for _, tt := range tests {
		got, err := plainListenAddr(tt.addr, tt.insecure)
		if tt.wantErr {
			if err == nil || !strings.Contains(err.Error(), "WRENN_AGENT_LISTEN_ADDR") || !strings.Contains(err.Error(), "WRENN_AGENT_INSECURE_LISTEN=true") {
				t.Errorf("%s: err = %v, want a refusal naming the variables", tt.addr, err)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("%s insecure=%v: %q, %v; want %q", tt.addr, tt.insecure, got, err, tt.want)
		}
	}
}
