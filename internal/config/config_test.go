package config

import (
	"errors"
	"strings"
	"testing"
	"time"
)

func envOf(m map[string]string) Getenv { return func(k string) string { return m[k] } }

func validCP() map[string]string {
	return map[string]string{
		"DATABASE_URL":     "postgres://u:p@localhost:5432/wrenn",
		"REDIS_URL":        "redis://localhost:6379/0",
		"WRENN_JWT_SECRET": strings.Repeat("s", 32),
	}
}

func TestLoadControlPlaneDefaults(t *testing.T) {
	c, err := LoadControlPlane(envOf(validCP()))
	if err != nil {
		t.Fatalf("valid config rejected: %v", err)
	}
	if c.ListenAddr != ":8000" || c.ShutdownTimeout != 20*time.Second || c.Log.Level != "info" || c.Log.Format != "text" {
		t.Fatalf("defaults wrong: %+v", c)
	}
}

func TestLoadControlPlaneChannels(t *testing.T) {
	env := validCP()
	c, err := LoadControlPlane(envOf(env))
	if err != nil || c.Channels.EncryptionKey != nil || c.Channels.AllowPrivate || len(c.Channels.RetryDelays) != 2 ||
		c.Channels.RetryDelays[0] != 10*time.Second || c.Channels.RetryDelays[1] != 30*time.Second ||
		c.Channels.DeliveryRetention != 30*24*time.Hour {
		t.Fatalf("channel defaults: %+v, %v", c.Channels, err)
	}
	env["WRENN_ENCRYPTION_KEY"] = strings.Repeat("0f", 32)
	env["WRENN_CHANNELS_ALLOW_PRIVATE"] = "true"
	env["WRENN_CHANNELS_RETRY_DELAYS"] = "100ms, 1s, 2s"
	env["WRENN_CHANNELS_DELIVERY_RETENTION"] = "7d"
	c, err = LoadControlPlane(envOf(env))
	if err != nil || len(c.Channels.EncryptionKey) != 32 || c.Channels.EncryptionKey[0] != 0x0f || !c.Channels.AllowPrivate ||
		len(c.Channels.RetryDelays) != 3 || c.Channels.RetryDelays[0] != 100*time.Millisecond || c.Channels.DeliveryRetention != 7*24*time.Hour {
		t.Fatalf("channel settings: %+v, %v", c.Channels, err)
	}
	// A malformed key is never quoted back.
	env["WRENN_ENCRYPTION_KEY"] = "secret-but-wrong"
	if _, err := LoadControlPlane(envOf(env)); err == nil || strings.Contains(err.Error(), "secret-but-wrong") {
		t.Fatalf("malformed key: %v", err)
	}
}

func TestLoadControlPlaneProblems(t *testing.T) {
	tests := []struct {
		name    string
		change  map[string]string
		wantVar string
		wantMsg string
	}{
		{"missing database", map[string]string{"DATABASE_URL": ""}, "DATABASE_URL", "is required"},
		{"database not postgres", map[string]string{"DATABASE_URL": "mysql://x/y"}, "DATABASE_URL", "postgres"},
		{"database garbage", map[string]string{"DATABASE_URL": "::not a url"}, "DATABASE_URL", "not a valid URL"},
		{"missing redis", map[string]string{"REDIS_URL": "  "}, "REDIS_URL", "is required"},
		{"redis wrong scheme", map[string]string{"REDIS_URL": "http://localhost:6379"}, "REDIS_URL", "redis"},
		{"short secret", map[string]string{"WRENN_JWT_SECRET": "short"}, "WRENN_JWT_SECRET", "at least 32"},
		{"missing secret", map[string]string{"WRENN_JWT_SECRET": ""}, "WRENN_JWT_SECRET", "is required"},
		{"listen no port", map[string]string{"WRENN_CP_LISTEN_ADDR": "localhost"}, "WRENN_CP_LISTEN_ADDR", "host:port"},
		{"listen port too big", map[string]string{"WRENN_CP_LISTEN_ADDR": ":70000"}, "WRENN_CP_LISTEN_ADDR", "0-65535"},
		{"public url relative", map[string]string{"CP_PUBLIC_URL": "/wrenn"}, "CP_PUBLIC_URL", "http or https"},
		{"bad duration", map[string]string{"WRENN_SHUTDOWN_TIMEOUT": "soon"}, "WRENN_SHUTDOWN_TIMEOUT", "duration"},
		{"duration too short", map[string]string{"WRENN_SHUTDOWN_TIMEOUT": "1ms"}, "WRENN_SHUTDOWN_TIMEOUT", "at least"},
		{"bad log level", map[string]string{"WRENN_LOG_LEVEL": "loud"}, "WRENN_LOG_LEVEL", "one of"},
		{"github without public url", map[string]string{"WRENN_GITHUB_CLIENT_ID": "id", "WRENN_GITHUB_CLIENT_SECRET": "secret"}, "CP_PUBLIC_URL", "required when WRENN_GITHUB_CLIENT_ID"},
		{"github id without secret", map[string]string{"WRENN_GITHUB_CLIENT_ID": "id", "CP_PUBLIC_URL": "https://cp.example"}, "WRENN_GITHUB_CLIENT_SECRET", "is required"},
		{"github secret without id", map[string]string{"WRENN_GITHUB_CLIENT_SECRET": "secret"}, "WRENN_GITHUB_CLIENT_ID", "is required"},
		{"github url not http", map[string]string{"WRENN_GITHUB_URL": "ftp://github.example"}, "WRENN_GITHUB_URL", "http or https"},
		{"github api url relative", map[string]string{"WRENN_GITHUB_API_URL": "/api/v3"}, "WRENN_GITHUB_API_URL", "http or https"},
		{"dashboard url relative", map[string]string{"WRENN_DASHBOARD_URL": "/app"}, "WRENN_DASHBOARD_URL", "http or https"},
		{"encryption key short", map[string]string{"WRENN_ENCRYPTION_KEY": strings.Repeat("ab", 31)}, "WRENN_ENCRYPTION_KEY", "64 hex digits"},
		{"encryption key not hex", map[string]string{"WRENN_ENCRYPTION_KEY": strings.Repeat("zz", 32)}, "WRENN_ENCRYPTION_KEY", "64 hex digits"},
		{"previous key malformed", map[string]string{"WRENN_ENCRYPTION_KEY": strings.Repeat("ab", 32), "WRENN_ENCRYPTION_KEY_PREVIOUS": "x"}, "WRENN_ENCRYPTION_KEY_PREVIOUS", "64 hex digits"},
		{"previous key alone", map[string]string{"WRENN_ENCRYPTION_KEY_PREVIOUS": strings.Repeat("ab", 32)}, "WRENN_ENCRYPTION_KEY_PREVIOUS", "without WRENN_ENCRYPTION_KEY"},
		{"allow private not bool", map[string]string{"WRENN_CHANNELS_ALLOW_PRIVATE": "maybe"}, "WRENN_CHANNELS_ALLOW_PRIVATE", "true or false"},
		{"retry delays bad", map[string]string{"WRENN_CHANNELS_RETRY_DELAYS": "10s,later"}, "WRENN_CHANNELS_RETRY_DELAYS", "durations"},
		{"delivery retention too short", map[string]string{"WRENN_CHANNELS_DELIVERY_RETENTION": "10m"}, "WRENN_CHANNELS_DELIVERY_RETENTION", "1h"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			env := validCP()
			for k, v := range tt.change {
				env[k] = v
			}
			_, err := LoadControlPlane(envOf(env))
			var errs Errors
			if !errors.As(err, &errs) {
				t.Fatalf("error = %v, want config.Errors", err)
			}
			for _, e := range errs {
				if e.Var == tt.wantVar && strings.Contains(e.Problem, tt.wantMsg) {
					if strings.Contains(err.Error(), "\n") {
						t.Fatalf("message spans lines: %q", err)
					}
					return
				}
			}
			t.Fatalf("error %q does not name %s with %q", err, tt.wantVar, tt.wantMsg)
		})
	}
}

func TestLoadControlPlaneOAuth(t *testing.T) {
	env := validCP()
	env["CP_PUBLIC_URL"] = "https://cp.example"
	c, err := LoadControlPlane(envOf(env))
	if err != nil {
		t.Fatal(err)
	}
	if c.OAuth.GitHub.Enabled() || c.OAuth.DashboardURL != "https://cp.example" ||
		c.OAuth.GitHub.BaseURL != "https://github.com" || c.OAuth.GitHub.APIURL != "https://api.github.com" {
		t.Fatalf("oauth defaults wrong: %+v", c.OAuth)
	}
	env["WRENN_GITHUB_CLIENT_ID"], env["WRENN_GITHUB_CLIENT_SECRET"] = "id", "secret"
	env["WRENN_GITHUB_URL"], env["WRENN_GITHUB_API_URL"] = "https://ghe.example", "https://ghe.example/api/v3"
	env["WRENN_DASHBOARD_URL"] = "https://app.example"
	c, err = LoadControlPlane(envOf(env))
	if err != nil {
		t.Fatal(err)
	}
	want := GitHubOAuth{ClientID: "id", ClientSecret: "secret", BaseURL: "https://ghe.example", APIURL: "https://ghe.example/api/v3"}
	if c.OAuth.GitHub != want || !c.OAuth.GitHub.Enabled() || c.OAuth.DashboardURL != "https://app.example" {
		t.Fatalf("oauth = %+v, want github %+v and dashboard https://app.example", c.OAuth, want)
	}
}

func TestLoadControlPlaneReportsEveryProblem(t *testing.T) {
	_, err := LoadControlPlane(envOf(map[string]string{}))
	var errs Errors
	if !errors.As(err, &errs) || len(errs) != 3 {
		t.Fatalf("want 3 problems (DATABASE_URL, REDIS_URL, WRENN_JWT_SECRET), got %v", err)
	}
}

func TestLoadAgent(t *testing.T) {
	tests := []struct {
		name    string
		env     map[string]string
		wantVar string
	}{
		{"defaults", map[string]string{}, ""},
		{"qemu tcg", map[string]string{"WRENN_VMM": "QEMU", "WRENN_ACCEL": "tcg"}, ""},
		{"bad vmm", map[string]string{"WRENN_VMM": "xen"}, "WRENN_VMM"},
		{"bad accel", map[string]string{"WRENN_ACCEL": "hvf"}, "WRENN_ACCEL"},
		{"relative dir", map[string]string{"WRENN_DIR": "var/wrenn"}, "WRENN_DIR"},
		{"vcpus not a number", map[string]string{"WRENN_MAX_VCPUS": "many"}, "WRENN_MAX_VCPUS"},
		{"vcpus zero", map[string]string{"WRENN_MAX_VCPUS": "0"}, "WRENN_MAX_VCPUS"},
		{"capacity", map[string]string{"WRENN_CAPACITY_VCPUS": "16", "WRENN_CAPACITY_MEMORY_MB": "24576"}, ""},
		{"capacity negative", map[string]string{"WRENN_CAPACITY_MEMORY_MB": "-1"}, "WRENN_CAPACITY_MEMORY_MB"},
		{"capacity not a number", map[string]string{"WRENN_CAPACITY_VCPUS": "lots"}, "WRENN_CAPACITY_VCPUS"},
		{"net settings", map[string]string{"WRENN_NET_PREFIX": "wt1-", "WRENN_NET_RANGE": "10.9.8.0/24"}, ""},
		{"net prefix too long", map[string]string{"WRENN_NET_PREFIX": "waytoolongprefix"}, "WRENN_NET_PREFIX"},
		{"net prefix upper", map[string]string{"WRENN_NET_PREFIX": "WRN-"}, "WRENN_NET_PREFIX"},
		{"net range not cidr", map[string]string{"WRENN_NET_RANGE": "10.200.0.0"}, "WRENN_NET_RANGE"},
		{"net range too small", map[string]string{"WRENN_NET_RANGE": "10.200.0.0/30"}, "WRENN_NET_RANGE"},
		{"net range ipv6", map[string]string{"WRENN_NET_RANGE": "fd00::/64"}, "WRENN_NET_RANGE"},
		{"net range host bits", map[string]string{"WRENN_NET_RANGE": "10.200.0.1/24"}, "WRENN_NET_RANGE"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a, err := LoadAgent(envOf(tt.env))
			if tt.wantVar == "" {
				if err != nil {
					t.Fatalf("unexpected error: %v", err)
				}
				if a.Dir == "" || a.ListenAddr == "" {
					t.Fatalf("defaults missing: %+v", a)
				}
				return
			}
			var errs Errors
			if !errors.As(err, &errs) || errs[0].Var != tt.wantVar {
				t.Fatalf("error = %v, want one naming %s", err, tt.wantVar)
			}
		})
	}
}
