package cli

import (
	"bytes"
	"strings"
	"testing"
)

func TestExitCodes(t *testing.T) {
	tests := []struct {
		name       string
		args       []string
		env        map[string]string
		wantCode   int
		wantStderr string
	}{
		{"unknown subcommand", []string{"bogus"}, nil, ExitUsage, `unknown command "bogus"`},
		{"unknown flag", []string{"server", "--nope"}, nil, ExitUsage, "unknown flag: --nope"},
		{"extra argument", []string{"version", "extra"}, nil, ExitUsage, `unknown command "extra"`},
		{"migrate without subcommand", []string{"migrate"}, nil, ExitUsage, "up, down or status"},
		{"images without subcommand shows its own usage", []string{"images"}, nil, ExitUsage, "wrenn images [command]"},
		{"images build without envd", []string{"images", "build"}, nil, ExitUsage, "--envd is required"},
		{"server without config", []string{"server"}, map[string]string{"DATABASE_URL": "", "REDIS_URL": "", "WRENN_JWT_SECRET": ""}, 1, "DATABASE_URL: is required"},
		{"server with bad config", []string{"server"}, map[string]string{"DATABASE_URL": "mysql://x", "REDIS_URL": "redis://localhost:1/0", "WRENN_JWT_SECRET": strings.Repeat("x", 40)}, 1, "DATABASE_URL: must be a postgres"},
		{"server with an unreadable CA", []string{"server"}, map[string]string{"DATABASE_URL": "postgres://x/y", "REDIS_URL": "redis://localhost:1/0", "WRENN_JWT_SECRET": strings.Repeat("x", 40),
			"WRENN_CA_CERT": "/nonexistent/ca.crt", "WRENN_CA_KEY": "/nonexistent/ca.key"}, 1, "WRENN_CA_CERT: is neither PEM text nor a readable file"},
		{"server with a CA but no key", []string{"server"}, map[string]string{"DATABASE_URL": "postgres://x/y", "REDIS_URL": "redis://localhost:1/0", "WRENN_JWT_SECRET": strings.Repeat("x", 40),
			"WRENN_CA_CERT": "/nonexistent/ca.crt", "WRENN_CA_KEY": ""}, 1, "WRENN_CA_KEY: is required when WRENN_CA_CERT is set"},
		{"agent with a bad insecure flag", []string{"agent"}, map[string]string{"WRENN_AGENT_INSECURE_LISTEN": "maybe"}, 1, "WRENN_AGENT_INSECURE_LISTEN: must be true or false"},
		{"migrate without database", []string{"migrate", "status"}, map[string]string{"DATABASE_URL": ""}, 1, "DATABASE_URL: is required"},
		{"version", []string{"version"}, nil, 0, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for k, v := range tt.env {
				t.Setenv(k, v)
			}
			var stdout, stderr bytes.Buffer
			code := Main(tt.args, &stdout, &stderr)
			if code != tt.wantCode {
				t.Fatalf("exit code = %d, want %d; stderr:\n%s", code, tt.wantCode, stderr.String())
			}
			if !strings.Contains(stderr.String(), tt.wantStderr) {
				t.Fatalf("stderr = %q, want it to contain %q", stderr.String(), tt.wantStderr)
			}
			if tt.wantCode == 1 {
				// Configuration problems are reported on one line.
				if lines := strings.Count(strings.TrimSpace(stderr.String()), "\n"); lines != 0 {
					t.Fatalf("stderr has %d extra lines: %q", lines, stderr.String())
				}
			}
			if tt.wantCode == 0 && !strings.HasPrefix(stdout.String(), "wrenn ") {
				t.Fatalf("stdout = %q", stdout.String())
			}
		})
	}
}
