package sandbox_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/wrenn-dev/wrenn/internal/agent/images"
	"github.com/wrenn-dev/wrenn/internal/testenv"
	pb "github.com/wrenn-dev/wrenn/proto/hostagent/v1"
)

// TestVMBaseTemplate boots the base template (Debian, built by `wrenn
// images build`) with no internet, so nothing can be fetched at start,
// and checks what E2B's SDKs and tests expect of it: user "user" as the
// default user, passwordless sudo, bash, python3, git, curl and CA
// certificates, envd as init.
func TestVMBaseTemplate(t *testing.T) {
	e := newVMEnv(t, nil)
	src := images.NewPaths(images.DirFromEnv())
	_, err := src.ResolvedRootfs(images.BaseTemplate)
	testenv.Require(t, err == nil, "base template missing under %s (run `wrenn images build`): %v", src.Dir, err)
	if err := os.Symlink(src.TemplateDir(images.BaseTemplate), filepath.Join(e.dir, "templates", images.BaseTemplate)); err != nil {
		t.Fatal(err)
	}
	m := e.parts.Manager
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	start := time.Now()
	offline := false
	// No default_user in the request: the template's metadata names it.
	if _, err := m.Create(ctx, &pb.CreateSandboxRequest{SandboxId: "base1", Template: images.BaseTemplate, MemoryMb: 512, InternetAccess: &offline}); err != nil {
		t.Fatalf("create: %v", err)
	}
	t.Logf("base create-to-ready: %v (TCG)", time.Since(start).Round(time.Millisecond))

	tests := []struct {
		name, user, script string
		// want are substrings of stdout; exact, when set, is all of it.
		want  []string
		exact string
	}{
		{"the default user is user, at home", "", "id -un; echo $HOME; pwd", nil, "user\n/home/user\n/home/user\n"},
		{"id user", "", "id user", []string{"uid=1000(user)", "gid=1000(user)"}, ""},
		{"python3", "user", "python3 -c 'print(1)'", nil, "1\n"},
		{"git", "user", "git --version", []string{"git version 2."}, ""},
		{"passwordless sudo", "user", "sudo -n true && sudo -n id -u", nil, "0\n"},
		{"bash", "user", "bash -c 'echo $BASH_VERSION'", []string{"5."}, ""},
		{"curl and CA certificates", "user", "curl --version | head -1; test -s /etc/ssl/certs/ca-certificates.crt && echo ca-ok", []string{"curl ", "ca-ok"}, ""},
		{"home is the user's", "user", "stat -c %U /home/user; touch ~/f && echo ok", nil, "user\nok\n"},
		{"envd is init", "root", "readlink /proc/1/exe", nil, "/usr/bin/envd\n"},
		{"no apt lists or manual pages shipped", "root", "find /var/lib/apt/lists /var/cache/apt /usr/share/man -type f ! -name lock | wc -l", nil, "0\n"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ectx, cancel := context.WithTimeout(ctx, time.Minute)
			defer cancel()
			res, err := m.Exec(ectx, &pb.ExecRequest{SandboxId: "base1", Cmd: "/bin/sh", Args: []string{"-c", tc.script}, User: tc.user})
			if err != nil {
				t.Fatalf("exec: %v", err)
			}
			out := string(res.Stdout)
			if res.ExitCode != 0 {
				t.Fatalf("exit %d, stdout %q, stderr %q", res.ExitCode, out, res.Stderr)
			}
			if tc.exact != "" && out != tc.exact {
				t.Errorf("stdout %q, want %q", out, tc.exact)
			}
			for _, w := range tc.want {
				if !strings.Contains(out, w) {
					t.Errorf("stdout %q lacks %q", out, w)
				}
			}
		})
	}
}
