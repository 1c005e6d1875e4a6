package config

import (
	"errors"
	"fmt"
	"testing"
	"time"
)

func TestControlPlaneLimitsDefaults(t *testing.T) {
	c, err := LoadControlPlane(envOf(validCP()))
	if err != nil {
		t.Fatal(err)
	}
	want := Limits{SandboxMaxVCPUs: 8, SandboxMaxMemoryMB: 8192, SandboxMaxTimeoutSec: 86400, TeamMaxRunningSandboxes: 20,
		MaxBodyBytes: 1 << 20, MaxUploadBytes: 1 << 30, AuthRateLimit: 20}
	if c.Limits != want {
		t.Fatalf("limits = %+v, want %+v", c.Limits, want)
	}
	if c.JWTTTL != 24*time.Hour || c.ReconcileInterval != 5*time.Second || c.AgentLifecycleTimeout != 5*time.Minute {
		t.Fatalf("durations wrong: %v %v %v", c.JWTTTL, c.ReconcileInterval, c.AgentLifecycleTimeout)
	}
}

func TestControlPlaneLimitsFromEnv(t *testing.T) {
	tests := []struct {
		name    string
		env     map[string]string
		check   func(ControlPlane) bool
		wantVar string
	}{
		{"vcpus", map[string]string{"WRENN_SANDBOX_MAX_VCPUS": "4"}, func(c ControlPlane) bool { return c.Limits.SandboxMaxVCPUs == 4 }, ""},
		{"memory", map[string]string{"WRENN_SANDBOX_MAX_MEMORY_MB": "2048"}, func(c ControlPlane) bool { return c.Limits.SandboxMaxMemoryMB == 2048 }, ""},
		{"timeout", map[string]string{"WRENN_SANDBOX_MAX_TIMEOUT_SEC": "600"}, func(c ControlPlane) bool { return c.Limits.SandboxMaxTimeoutSec == 600 }, ""},
		{"team running", map[string]string{"WRENN_TEAM_MAX_RUNNING_SANDBOXES": "3"}, func(c ControlPlane) bool { return c.Limits.TeamMaxRunningSandboxes == 3 }, ""},
		{"rate limit off", map[string]string{"WRENN_AUTH_RATE_LIMIT": "0"}, func(c ControlPlane) bool { return c.Limits.AuthRateLimit == 0 }, ""},
		{"reconcile", map[string]string{"WRENN_RECONCILE_INTERVAL": "2s"}, func(c ControlPlane) bool { return c.ReconcileInterval == 2*time.Second }, ""},
		{"events maxlen", map[string]string{"WRENN_EVENTS_MAXLEN": "5000"}, func(c ControlPlane) bool { return c.EventsMaxLen == 5000 }, ""},
		{"events maxlen default", map[string]string{}, func(c ControlPlane) bool { return c.EventsMaxLen == 100000 }, ""},
		{"events maxlen too small", map[string]string{"WRENN_EVENTS_MAXLEN": "10"}, nil, "WRENN_EVENTS_MAXLEN"},
		{"jwt ttl", map[string]string{"WRENN_JWT_TTL": "1h"}, func(c ControlPlane) bool { return c.JWTTTL == time.Hour }, ""},
		{"upload", map[string]string{"WRENN_MAX_UPLOAD_BYTES": "2048"}, func(c ControlPlane) bool { return c.Limits.MaxUploadBytes == 2048 }, ""},
		{"trusted proxies", map[string]string{"WRENN_TRUSTED_PROXIES": " 10.0.0.0/8, 192.0.2.7 ,fd00::/8,::1"}, func(c ControlPlane) bool {
			return fmt.Sprint(c.TrustedProxies) == "[10.0.0.0/8 192.0.2.7/32 fd00::/8 ::1/128]"
		}, ""},
		{"no trusted proxies", map[string]string{}, func(c ControlPlane) bool { return len(c.TrustedProxies) == 0 }, ""},
		{"trusted proxy garbage", map[string]string{"WRENN_TRUSTED_PROXIES": "10.0.0.0/8,lb.internal"}, nil, "WRENN_TRUSTED_PROXIES"},
		{"trusted proxy bad mask", map[string]string{"WRENN_TRUSTED_PROXIES": "10.0.0.0/33"}, nil, "WRENN_TRUSTED_PROXIES"},
		{"trusted proxy host bits", map[string]string{"WRENN_TRUSTED_PROXIES": "10.1.2.3/8"}, nil, "WRENN_TRUSTED_PROXIES"},
		{"trusted proxy mapped", map[string]string{"WRENN_TRUSTED_PROXIES": "::ffff:10.0.0.0/104"}, nil, "WRENN_TRUSTED_PROXIES"},
		{"vcpus zero", map[string]string{"WRENN_SANDBOX_MAX_VCPUS": "0"}, nil, "WRENN_SANDBOX_MAX_VCPUS"},
		{"memory garbage", map[string]string{"WRENN_SANDBOX_MAX_MEMORY_MB": "lots"}, nil, "WRENN_SANDBOX_MAX_MEMORY_MB"},
		{"team zero", map[string]string{"WRENN_TEAM_MAX_RUNNING_SANDBOXES": "0"}, nil, "WRENN_TEAM_MAX_RUNNING_SANDBOXES"},
		{"reconcile too fast", map[string]string{"WRENN_RECONCILE_INTERVAL": "10ms"}, nil, "WRENN_RECONCILE_INTERVAL"},
		{"ttl garbage", map[string]string{"WRENN_JWT_TTL": "forever"}, nil, "WRENN_JWT_TTL"},
		{"body too small", map[string]string{"WRENN_MAX_BODY_BYTES": "10"}, nil, "WRENN_MAX_BODY_BYTES"},
		{"metrics retention default", map[string]string{}, func(c ControlPlane) bool { return c.MetricsRetention == 60*24*time.Hour }, ""},
		{"metrics retention days", map[string]string{"WRENN_METRICS_RETENTION": "7d"}, func(c ControlPlane) bool { return c.MetricsRetention == 7*24*time.Hour }, ""},
		{"metrics retention hours", map[string]string{"WRENN_METRICS_RETENTION": "36h"}, func(c ControlPlane) bool { return c.MetricsRetention == 36*time.Hour }, ""},
		{"metrics retention too short", map[string]string{"WRENN_METRICS_RETENTION": "10m"}, nil, "WRENN_METRICS_RETENTION"},
		{"metrics retention garbage", map[string]string{"WRENN_METRICS_RETENTION": "xd"}, nil, "WRENN_METRICS_RETENTION"},
		{"metrics off by default", map[string]string{}, func(c ControlPlane) bool { return c.Metrics == (Metrics{}) }, ""},
		{"metrics listener", map[string]string{"WRENN_METRICS_LISTEN_ADDR": "127.0.0.1:9100", "WRENN_METRICS_TOKEN": "0123456789abcdef"},
			func(c ControlPlane) bool {
				return c.Metrics == Metrics{ListenAddr: "127.0.0.1:9100", Token: "0123456789abcdef"}
			}, ""},
		{"metrics listener garbage", map[string]string{"WRENN_METRICS_LISTEN_ADDR": "nine-thousand"}, nil, "WRENN_METRICS_LISTEN_ADDR"},
		{"metrics token short", map[string]string{"WRENN_METRICS_TOKEN": "short"}, nil, "WRENN_METRICS_TOKEN"},
		{"lifecycle too short", map[string]string{"WRENN_AGENT_LIFECYCLE_TIMEOUT": "1s"}, nil, "WRENN_AGENT_LIFECYCLE_TIMEOUT"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			env := validCP()
			for k, v := range tt.env {
				env[k] = v
			}
			c, err := LoadControlPlane(envOf(env))
			if tt.wantVar == "" {
				if err != nil || !tt.check(c) {
					t.Fatalf("err %v, config %+v", err, c)
				}
				return
			}
			var errs Errors
			if !errors.As(err, &errs) || len(errs) != 1 || errs[0].Var != tt.wantVar {
				t.Fatalf("error = %v, want one naming %s", err, tt.wantVar)
			}
		})
	}
}
