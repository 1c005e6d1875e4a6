package images

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/wrenn-dev/wrenn/internal/names"
	"github.com/wrenn-dev/wrenn/internal/testenv"
)

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func prereq(t *testing.T, what string) {
	t.Helper()
	testenv.Require(t, false, "%s", what)
}

// fakeEnvd builds a small static Go program standing in for envd: the
// rootfs layout does not depend on what envd does (the VM tests in
// vmm/qemu boot the real one).
func fakeEnvd(t *testing.T, dir, variant string) string {
	t.Helper()
	src := filepath.Join(dir, "main.go")
	prog := "package main\n\nimport \"fmt\"\n\nfunc main() { fmt.Println(\"" + variant + "\") }\n"
	if err := os.WriteFile(src, []byte(prog), 0o644); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "envd-"+variant)
	cmd := exec.Command("go", "build", "-o", out, src)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOFLAGS=-mod=mod", "GO111MODULE=off")
	cmd.Dir = dir
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build fake envd: %v: %s", err, b)
	}
	return out
}

func requireTools(t *testing.T) {
	t.Helper()
	for _, tool := range []string{"mkfs.ext4", "debugfs", "go"} {
		if _, err := exec.LookPath(tool); err != nil {
			prereq(t, tool+" not installed (e2fsprogs / Go)")
		}
	}
	for _, f := range []string{"/bin/busybox", "/etc/ssl/certs/ca-certificates.crt"} {
		if _, err := os.Stat(f); err != nil {
			prereq(t, f+" missing (Debian packages busybox-static, ca-certificates)")
		}
	}
}

// debugfs runs one debugfs request against an ext4 image (no mount needed).
func debugfs(t *testing.T, img, req string) string {
	t.Helper()
	out, err := exec.Command("debugfs", "-R", req, img).Output()
	if err != nil {
		t.Fatalf("debugfs %q: %v", req, err)
	}
	return string(out)
}

// testConfig reuses the kernel of the real WRENN_DIR when it has the
// current key (building it takes minutes); otherwise the kernel is skipped
// and only the rootfs is built.
func testConfig(t *testing.T, envd string) (Config, bool) {
	t.Helper()
	cfg := Config{WrennDir: t.TempDir(), EnvdPath: envd, Logger: quiet(), RootfsSizeMiB: 64,
		ReuseKernelFrom: DirFromEnv()}
	b := NewBuilder(cfg)
	key, err := b.KernelKey()
	if err == nil && fileExists(NewPaths(DirFromEnv()).KernelFile(key)) {
		return cfg, true
	}
	cfg.SkipKernel = true
	return cfg, false
}

func TestBuildInstallsAndIsIdempotent(t *testing.T) {
	requireTools(t)
	tmp := t.TempDir()
	envd := fakeEnvd(t, tmp, "v1")
	cfg, withKernel := testConfig(t, envd)
	if !withKernel {
		if testenv.InCI() {
			t.Fatalf("CI=true: no prebuilt kernel under %s with the current key (run `wrenn images build`)", DirFromEnv())
		}
		t.Logf("no prebuilt kernel under %s with the current key: testing the rootfs only (run `wrenn images build` to include the kernel)", DirFromEnv())
	}
	ctx := context.Background()
	b := NewBuilder(cfg)
	res, err := b.Build(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !res.RootfsBuilt {
		t.Fatal("first build did not build the rootfs")
	}
	p := b.Paths()
	if withKernel {
		k, err := p.ResolvedKernel()
		if err != nil || k != res.KernelPath {
			t.Fatalf("kernel symlink -> %q (%v), want %q", k, err, res.KernelPath)
		}
		if ok, err := HasPVHNote(k); err != nil || !ok {
			t.Fatalf("installed kernel has no PVH note: %v", err)
		}
		st, err := Status(p.Dir)
		if err != nil || !st.Ready() || st.Err() != nil {
			t.Fatalf("Status after build: %+v, %v", st, err)
		}
		if st.Kernel.Key != res.KernelKey || st.Minimal.Key != res.RootfsKey {
			t.Fatalf("Status keys %q/%q, want %q/%q", st.Kernel.Key, st.Minimal.Key, res.KernelKey, res.RootfsKey)
		}
	}
	img, err := p.ResolvedRootfs(MinimalTemplate)
	if err != nil || img != res.RootfsPath {
		t.Fatalf("rootfs symlink -> %q (%v), want %q", img, err, res.RootfsPath)
	}
	fi, err := os.Stat(img)
	if err != nil || fi.Size() != 64<<20 {
		t.Fatalf("image size: %v %v", fi, err)
	}
	m, err := ReadMetadata(p.Metadata(MinimalTemplate))
	if err != nil || m.RootfsKey != res.RootfsKey || m.EnvdSHA256 == "" || m.Template != MinimalTemplate {
		t.Fatalf("metadata %+v, %v", m, err)
	}

	// The image's contents, read with debugfs.
	checks := []struct {
		req, want string
	}{
		{"cat /etc/passwd", "user:x:1000:1000:user:/home/user:/bin/sh"},
		{"cat /etc/group", "user:x:1000:"},
		{"cat /etc/hosts", "127.0.0.1\tlocalhost"},
		{"stat /init", `Fast link dest: "/usr/bin/envd"`},
		{"stat /sbin/init", `Fast link dest: "/usr/bin/envd"`},
		{"stat /bin/sh", `Fast link dest: "/bin/busybox"`},
		{"stat /usr/bin/env", `Fast link dest: "/bin/busybox"`},
		{"stat /home/user", "User:  1000   Group:  1000"},
		{"stat /tmp", "Mode:  01777"},
		{"stat /root", "Mode:  0700"},
		{"stat /usr/bin/envd", "Mode:  0755"},
		{"stat /etc/ssl/certs/ca-certificates.crt", "Type: regular"},
		{"ls /dev", "."},
		{"ls /proc", "."},
	}
	for _, c := range checks {
		if out := debugfs(t, img, c.req); !strings.Contains(out, c.want) {
			t.Errorf("debugfs %q: want %q in:\n%s", c.req, c.want, out)
		}
	}
	envdInImage := filepath.Join(tmp, "envd-extracted")
	debugfs(t, img, "dump /usr/bin/envd "+envdInImage)
	if a, b := mustRead(t, envd), mustRead(t, envdInImage); !bytes.Equal(a, b) {
		t.Fatal("envd in the image differs from the input")
	}

	// Second run: nothing to do.
	start := time.Now()
	res2, err := NewBuilder(cfg).Build(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if res2.RootfsBuilt || res2.KernelBuilt || res2.RootfsKey != res.RootfsKey {
		t.Fatalf("second build was not a no-op: %+v", res2)
	}
	if took := time.Since(start); took > 3*time.Second {
		t.Fatalf("no-op build took %v", took)
	}
	if fi2, _ := os.Stat(img); !fi2.ModTime().Equal(fi.ModTime()) {
		t.Fatal("no-op build rewrote the image")
	}

	// A new envd means a new rootfs; the old file stays for overlays using it.
	cfg.EnvdPath = fakeEnvd(t, tmp, "v2")
	res3, err := NewBuilder(cfg).Build(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !res3.RootfsBuilt || res3.RootfsKey == res.RootfsKey {
		t.Fatalf("envd change did not rebuild: %+v", res3)
	}
	if _, err := os.Stat(res.RootfsPath); err != nil {
		t.Fatalf("old rootfs removed: %v", err)
	}
	if cur, _ := p.ResolvedRootfs(MinimalTemplate); cur != res3.RootfsPath {
		t.Fatalf("symlink -> %q, want %q", cur, res3.RootfsPath)
	}
}

func mustRead(t *testing.T, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestBuildBadInput(t *testing.T) {
	requireTools(t)
	envd := fakeEnvd(t, t.TempDir(), "ok")
	dynamic, err := exec.LookPath("ls") // dynamically linked on Debian
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		mod  func(*Config)
		want string
	}{
		{"no envd", func(c *Config) { c.EnvdPath = "" }, "no envd binary"},
		{"envd missing", func(c *Config) { c.EnvdPath = "/nonexistent/envd" }, "not an ELF"},
		{"envd not ELF", func(c *Config) { c.EnvdPath = "/etc/hosts" }, "not an ELF"},
		{"envd dynamic", func(c *Config) { c.EnvdPath = dynamic }, "dynamically linked"},
		{"busybox missing", func(c *Config) { c.BusyboxPath = "/nonexistent/busybox" }, "busybox-static"},
		{"ca missing", func(c *Config) { c.CACertsPath = "/nonexistent/ca.crt" }, "ca-certificates"},
		{"kernel source missing", func(c *Config) {
			c.SkipKernel = false
			c.ReuseKernelFrom = ""
			c.KernelSource = "/nonexistent/linux-source-6.1.tar.xz"
		}, "linux-source-6.1"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := Config{WrennDir: t.TempDir(), EnvdPath: envd, SkipKernel: true, Logger: quiet(), RootfsSizeMiB: 64}
			tc.mod(&cfg)
			_, err := NewBuilder(cfg).Build(context.Background())
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want it to mention %q", err, tc.want)
			}
		})
	}
}

func TestStatusMissing(t *testing.T) {
	dir := t.TempDir()
	st, err := Status(dir)
	if err != nil {
		t.Fatal(err)
	}
	if st.Ready() || len(st.Missing) != 2 || st.Base.Present {
		t.Fatalf("empty dir: %+v", st)
	}
	if err := st.Err(); !errors.Is(err, ErrMissing) || !strings.Contains(err.Error(), "wrenn images build") {
		t.Fatalf("Err() = %v", err)
	}
	p := NewPaths(dir)
	if _, err := p.ResolvedKernel(); !errors.Is(err, ErrMissing) {
		t.Fatalf("ResolvedKernel: %v", err)
	}
	// A dangling symlink is missing, not an error.
	if err := os.MkdirAll(p.KernelsDir(), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("vmlinux-gone", p.Kernel()); err != nil {
		t.Fatal(err)
	}
	if st, err := Status(dir); err != nil || st.Kernel.Present {
		t.Fatalf("dangling kernel link: %+v, %v", st, err)
	}
}

func TestKernelKey(t *testing.T) {
	base := kernelKey("6.1.192-3", KernelConfig, KernelPatch)
	if len(base) != 16 || base != kernelKey("6.1.192-3", KernelConfig, KernelPatch) {
		t.Fatalf("unstable key %q", base)
	}
	for name, k := range map[string]string{
		"source": kernelKey("6.1.193-1", KernelConfig, KernelPatch),
		"config": kernelKey("6.1.192-3", append(append([]byte{}, KernelConfig...), "CONFIG_X=y\n"...), KernelPatch),
		"patch":  kernelKey("6.1.192-3", KernelConfig, nil),
		"split":  kernelKey("6.1.192-3"+string(KernelConfig[:1]), KernelConfig[1:], KernelPatch),
	} {
		if k == base {
			t.Errorf("changing the %s kept the key", name)
		}
	}
	if !bytes.Contains(KernelConfig, []byte("CONFIG_PVH=y")) || !bytes.Contains(KernelConfig, []byte("# CONFIG_LEGACY_PTYS is not set")) {
		t.Fatal("embedded kernel config lacks PVH or the LEGACY_PTYS shortcut")
	}
}

func TestHasPVHNote(t *testing.T) {
	if ok, err := HasPVHNote("/bin/busybox"); err != nil || ok {
		t.Fatalf("busybox: %v %v", ok, err)
	}
	if _, err := HasPVHNote("/etc/hosts"); err == nil {
		t.Fatal("non-ELF accepted")
	}
	k, err := NewPaths(DirFromEnv()).ResolvedKernel()
	if err != nil {
		prereq(t, err.Error())
	}
	if ok, err := HasPVHNote(k); err != nil || !ok {
		t.Fatalf("installed kernel %s: %v %v", k, ok, err)
	}
}

func xenNote(typ uint32, desc []byte) []byte {
	var b bytes.Buffer
	name := []byte("Xen\x00")
	_ = binary.Write(&b, binary.LittleEndian, [3]uint32{uint32(len(name)), uint32(len(desc)), typ})
	b.Write(name)
	b.Write(desc)
	for b.Len()%4 != 0 {
		b.WriteByte(0)
	}
	return b.Bytes()
}

func FuzzHasXenPVHNote(f *testing.F) {
	f.Add(xenNote(18, []byte{1, 2, 3, 4}))
	f.Add(append(xenNote(5, []byte("abc")), xenNote(18, []byte{0, 0, 0, 1})...))
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, 18, 0, 0, 0})
	f.Fuzz(func(t *testing.T, data []byte) {
		_ = hasXenPVHNote(data, binary.LittleEndian)
	})
}

func TestHasXenPVHNote(t *testing.T) {
	tests := []struct {
		name string
		data []byte
		want bool
	}{
		{"pvh", xenNote(18, []byte{1, 2, 3, 4}), true},
		{"second note", append(xenNote(5, []byte("abc")), xenNote(18, nil)...), true},
		{"other type", xenNote(17, nil), false},
		{"truncated", xenNote(18, []byte{1, 2, 3, 4})[:14], false},
		{"huge sizes", []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 18, 0, 0, 0}, false},
		{"empty", nil, false},
	}
	for _, tc := range tests {
		if got := hasXenPVHNote(tc.data, binary.LittleEndian); got != tc.want {
			t.Errorf("%s: got %v", tc.name, got)
		}
	}
}

func FuzzParseMetadata(f *testing.F) {
	f.Add([]byte(`{"template":"minimal","rootfs_key":"abc","rootfs_file":"rootfs-abc.ext4","format":"ext4","size_bytes":1}`))
	f.Add([]byte(`{"template":"../x","rootfs_key":"a","rootfs_file":"../../etc/passwd"}`))
	f.Add([]byte(`{}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := ParseMetadata(data)
		if err != nil {
			return
		}
		if strings.ContainsAny(m.RootfsFile, "/") || !names.ValidTemplate(m.Template) || m.SizeBytes < 0 {
			t.Fatalf("accepted unsafe metadata %+v", m)
		}
	})
}

func TestParseMetadata(t *testing.T) {
	tests := []struct {
		in      string
		wantErr bool
	}{
		{`{"template":"minimal","rootfs_key":"abc","rootfs_file":"rootfs-abc.ext4","size_bytes":1}`, false},
		{`{"template":"../x","rootfs_key":"a","rootfs_file":"r.ext4"}`, true},
		{`{"template":"minimal","rootfs_key":"a","rootfs_file":"../r.ext4"}`, true},
		{`{"template":"minimal","rootfs_key":"","rootfs_file":"r.ext4"}`, true},
		{`{"template":"minimal","rootfs_key":"a","rootfs_file":"r.ext4","size_bytes":-1}`, true},
		{`not json`, true},
	}
	for _, tc := range tests {
		if _, err := ParseMetadata([]byte(tc.in)); (err != nil) != tc.wantErr {
			t.Errorf("ParseMetadata(%s): err %v, wantErr %v", tc.in, err, tc.wantErr)
		}
	}
}

// TestConcurrentBuilds: two builders on one WRENN_DIR serialise on the lock
// file; exactly one builds, the other finds the result.
func TestConcurrentBuilds(t *testing.T) {
	requireTools(t)
	envd := fakeEnvd(t, t.TempDir(), "concurrent")
	cfg := Config{WrennDir: t.TempDir(), EnvdPath: envd, SkipKernel: true, Logger: quiet(), RootfsSizeMiB: 64}
	type out struct {
		res Result
		err error
	}
	results := make(chan out, 2)
	for range 2 {
		go func() {
			res, err := NewBuilder(cfg).Build(context.Background())
			results <- out{res, err}
		}()
	}
	built := 0
	var keys []string
	for range 2 {
		o := <-results
		if o.err != nil {
			t.Fatal(o.err)
		}
		if o.res.RootfsBuilt {
			built++
		}
		keys = append(keys, o.res.RootfsKey)
	}
	if built != 1 || keys[0] != keys[1] {
		t.Fatalf("built %d times, keys %v", built, keys)
	}
	// A cancelled wait for the lock is an error, not a hang.
	unlock, err := lockDir(context.Background(), filepath.Join(cfg.WrennDir, ".images.lock"))
	if err != nil {
		t.Fatal(err)
	}
	defer unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if _, err := NewBuilder(cfg).Build(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Build while locked: %v", err)
	}
}

func TestCompileProgressCountsObjects(t *testing.T) {
	p := newCompileProgress()
	// kbuild's quiet output, split at awkward places as pipes deliver it.
	chunks := []string{"  CC      kernel/fork.o\n  CC      kernel/", "exit.o\n  AR      kernel/built-in.a\n  LD  ", "    vmlinux.o\n  CC      mm/slab.o\n"}
	for _, c := range chunks {
		if _, err := p.Write([]byte(c)); err != nil {
			t.Fatal(err)
		}
	}
	if got := p.count(); got != 3 {
		t.Fatalf("counted %d objects, want 3", got)
	}
}
