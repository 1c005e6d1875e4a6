package images

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func TestBaseKeys(t *testing.T) {
	ref := NewBuilder(Config{WrennDir: t.TempDir()})
	refDebian := ref.debianKey()
	refBase := ref.baseKey(refDebian, "envd-sum")
	tests := []struct {
		name        string
		cfg         Config
		envdSum     string
		debianMoves bool
		baseMoves   bool
	}{
		{"same inputs", Config{}, "envd-sum", false, false},
		{"another suite", Config{DebianSuite: "trixie"}, "envd-sum", true, true},
		{"another mirror", Config{DebianMirror: "http://127.0.0.1:3142/debian"}, "envd-sum", true, true},
		{"another envd", Config{}, "other-envd", false, true},
		{"another size", Config{BaseSizeMiB: 4096}, "envd-sum", false, true},
		{"the WRENN_DIR does not count", Config{WrennDir: t.TempDir()}, "envd-sum", false, false},
	}
	for _, tc := range tests {
		if tc.cfg.WrennDir == "" {
			tc.cfg.WrennDir = ref.paths.Dir
		}
		b := NewBuilder(tc.cfg)
		d := b.debianKey()
		k := b.baseKey(d, tc.envdSum)
		if (d != refDebian) != tc.debianMoves || (k != refBase) != tc.baseMoves {
			t.Errorf("%s: debian key moved %v (want %v), base key moved %v (want %v)", tc.name, d != refDebian, tc.debianMoves, k != refBase, tc.baseMoves)
		}
	}
}

// fakeDebianTar makes a small tarball standing in for mmdebstrap's tree
// (the real one is built by `wrenn images build` and booted by
// TestVMBaseTemplate in internal/agent/sandbox).
func fakeDebianTar(t *testing.T, dest string) {
	t.Helper()
	tree := t.TempDir()
	for _, d := range []string{"usr/bin", "usr/sbin", "etc", "home/user"} {
		if err := os.MkdirAll(filepath.Join(tree, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for p, c := range map[string]string{"etc/hostname": "builder\n", "etc/passwd": "root:x:0:0::/root:/bin/bash\nuser:x:1000:1000::/home/user:/bin/bash\n", "usr/bin/python3": "#!fake\n"} {
		if err := os.WriteFile(filepath.Join(tree, p), []byte(c), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if b, err := exec.Command("tar", "-C", tree, "-cf", dest, ".").CombinedOutput(); err != nil {
		t.Fatalf("tar: %v %s", err, b)
	}
}

// TestBuildBaseFromCachedTree: with the Debian tree cached, a build makes
// the base image (envd as init, the host files, metadata naming "user")
// without mmdebstrap; a rerun is a no-op; a new envd repacks the image
// from the same tree.
func TestBuildBaseFromCachedTree(t *testing.T) {
	requireTools(t)
	tmp := t.TempDir()
	cfg := Config{WrennDir: t.TempDir(), EnvdPath: fakeEnvd(t, tmp, "base-one"), SkipKernel: true, Logger: quiet(),
		RootfsSizeMiB: 64, BaseSizeMiB: 64, Base: true}
	b := NewBuilder(cfg)
	if err := os.MkdirAll(b.paths.CacheDir(), 0o755); err != nil {
		t.Fatal(err)
	}
	tarball := b.paths.debianTar(b.debianKey())
	fakeDebianTar(t, tarball)
	ctx := context.Background()

	res, err := b.Build(ctx)
	if err != nil {
		t.Fatalf("build: %v", err)
	}
	if !res.BaseBuilt || res.BasePath != b.paths.RootfsFile(BaseTemplate, res.BaseKey) {
		t.Fatalf("result %+v", res)
	}
	if st, err := Status(b.paths.Dir); err != nil || !st.Base.Present || st.Base.RealPath != res.BasePath || st.Base.Key != res.BaseKey {
		t.Fatalf("Status after the base build: %+v, %v", st.Base, err)
	}
	checks := []struct{ req, want string }{
		{"cat /etc/hostname", "sandbox\n"},
		{"cat /etc/resolv.conf", ""},
		{"cat /usr/bin/python3", "#!fake\n"},
		{"stat /init", "Fast link dest: \"/usr/bin/envd\""},
		{"stat /usr/sbin/init", "Fast link dest: \"/usr/bin/envd\""},
		{"stat /usr/bin/envd", "Mode:  0755"},
	}
	for _, c := range checks {
		out := debugfs(t, res.BasePath, c.req)
		if c.want == "" && strings.TrimSpace(out) != "" || !strings.Contains(out, c.want) {
			t.Errorf("debugfs %q = %q, want %q", c.req, out, c.want)
		}
	}
	md, err := ReadMetadata(b.paths.Metadata(BaseTemplate))
	if err != nil || md.DefaultUser != BaseUser || md.RootfsKey != res.BaseKey {
		t.Errorf("metadata %+v %v", md, err)
	}

	again, err := NewBuilder(cfg).Build(ctx)
	if err != nil || again.BaseBuilt || again.BaseKey != res.BaseKey {
		t.Errorf("second build: %+v %v, want a no-op", again, err)
	}
	cfg.EnvdPath = fakeEnvd(t, tmp, "base-two")
	next, err := NewBuilder(cfg).Build(ctx)
	if err != nil || !next.BaseBuilt || next.BaseKey == res.BaseKey {
		t.Errorf("build with a new envd: %+v %v, want a new image", next, err)
	}
	if !fileExists(tarball) {
		t.Error("the Debian tree was dropped by a rebuild for a new envd")
	}
}
