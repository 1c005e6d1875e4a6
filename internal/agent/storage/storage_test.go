package storage

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/wrenn-dev/wrenn/internal/testenv"
)

// requireTools skips (or fails under CI=true) when a tool is missing.
func requireTools(t testing.TB, tools ...string) {
	t.Helper()
	for _, tool := range tools {
		_, err := exec.LookPath(tool)
		testenv.Require(t, err == nil, "%s not installed (qemu-img, qemu-io: qemu-utils; e2fsck, resize2fs, mkfs.ext4, debugfs: e2fsprogs; mkfs.xfs: xfsprogs)", tool)
	}
}

func newStore(t testing.TB, cache bool) *Store {
	t.Helper()
	cfg := Config{}
	if cache {
		cfg.CacheDir = filepath.Join(t.TempDir(), "cache")
	}
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func runTool(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %v: %v\n%s", name, args, err, out)
	}
	return string(out)
}

// makeBase builds a raw ext4 image of size bytes holding files.
func makeBase(t testing.TB, dir string, size int64, files map[string]string) string {
	t.Helper()
	src := filepath.Join(dir, "rootfs")
	if err := os.MkdirAll(src, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(src, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	img := filepath.Join(dir, "base.raw")
	if err := os.Truncate(img, 0); err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	f, err := os.Create(img)
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
	if err := os.Truncate(img, size); err != nil {
		t.Fatal(err)
	}
	runTool(t, "mkfs.ext4", "-q", "-F", "-d", src, img)
	return img
}

func fileSum(t testing.TB, path string) [32]byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return sha256.Sum256(b)
}

type imgInfo struct {
	Format          string `json:"format"`
	VirtualSize     int64  `json:"virtual-size"`
	BackingFilename string `json:"backing-filename"`
	BackingFormat   string `json:"backing-filename-format"`
}

func info(t testing.TB, path string) imgInfo {
	t.Helper()
	var i imgInfo
	if err := json.Unmarshal([]byte(runTool(t, "qemu-img", "info", "--output=json", path)), &i); err != nil {
		t.Fatal(err)
	}
	return i
}

func TestQcow2Overlay(t *testing.T) {
	requireTools(t, "qemu-img", "qemu-io", "mkfs.ext4")
	dir := t.TempDir()
	base := makeBase(t, dir, 64<<20, map[string]string{"hello.txt": "hi"})
	baseSum := fileSum(t, base)

	tests := []struct {
		name  string
		cache bool
		size  int64
		want  int64
	}{
		{"qemu-img, base size", false, 0, 64 << 20},
		{"qemu-img, 1 GiB", false, 1 << 30, 1 << 30},
		{"cached, 1 GiB", true, 1 << 30, 1 << 30},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := newStore(t, tc.cache)
			// Twice with the cache: the second comes from the pre-made file.
			for i := range 2 {
				dst := filepath.Join(t.TempDir(), fmt.Sprintf("disk%d.qcow2", i))
				if err := s.NewQcow2Overlay(t.Context(), base, FormatRaw, dst, tc.size); err != nil {
					t.Fatal(err)
				}
				used, err := DiskUsage(dst)
				if err != nil {
					t.Fatal(err)
				}
				if used > 512<<10 {
					t.Fatalf("new overlay uses %d bytes on disk; the base was copied?", used)
				}
				in := info(t, dst)
				if in.Format != "qcow2" || in.VirtualSize != tc.want || in.BackingFilename != base || in.BackingFormat != "raw" {
					t.Fatalf("qemu-img info = %+v", in)
				}
				runTool(t, "qemu-img", "check", "-q", dst)

				// Guest-style writes go to the overlay only.
				runTool(t, "qemu-io", "-f", "qcow2", "-c", "write -P 0xab 0 4M", dst)
				runTool(t, "qemu-io", "-f", "qcow2", "-c", "read -P 0xab 0 4M", dst)
				if tc.want > 64<<20 {
					// Past the base: reads zeros.
					runTool(t, "qemu-io", "-f", "qcow2", "-c", "read -P 0 64M 1M", dst)
				}
				if fileSum(t, base) != baseSum {
					t.Fatal("base changed after writes through an overlay")
				}
				after, _ := DiskUsage(dst)
				if after < 4<<20 || after > used+6<<20 {
					t.Fatalf("overlay uses %d bytes after a 4 MiB write", after)
				}
			}
		})
	}
}

func TestQcow2OverlayBadInput(t *testing.T) {
	requireTools(t, "qemu-img", "mkfs.ext4")
	dir := t.TempDir()
	base := makeBase(t, dir, 16<<20, nil)
	s := newStore(t, true)
	tests := []struct {
		name, base, dst string
		size            int64
		want            string
	}{
		{"missing base", filepath.Join(dir, "nope.raw"), filepath.Join(dir, "a.qcow2"), 0, "base image"},
		{"base is a directory", dir, filepath.Join(dir, "a.qcow2"), 0, "not a regular file"},
		{"smaller than base", base, filepath.Join(dir, "a.qcow2"), 1 << 20, "smaller than base"},
		{"unaligned size", base, filepath.Join(dir, "a.qcow2"), 16<<20 + 1, "multiple of 512"},
		{"empty destination", base, "", 0, "empty destination"},
		{"destination dir missing", base, filepath.Join(dir, "no", "such", "a.qcow2"), 0, "no such file"},
		{"destination exists", base, base, 0, "already exists"},
		{"raw base called qcow2", base, filepath.Join(dir, "q.qcow2"), -1, "not a qcow2 image"},
		{"unknown base format", base, filepath.Join(dir, "v.qcow2"), -2, "unknown base format"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			format, size := FormatRaw, tc.size
			switch size { // negative sizes select a wrong base format
			case -1:
				format, size = FormatQcow2, 0
			case -2:
				format, size = "vmdk", 0
			}
			err := s.NewQcow2Overlay(t.Context(), tc.base, format, tc.dst, size)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error = %v, want containing %q", err, tc.want)
			}
		})
	}
	missing, err := New(Config{QemuImg: "/nonexistent/qemu-img"})
	if err != nil {
		t.Fatal(err)
	}
	err = missing.NewQcow2Overlay(t.Context(), base, FormatRaw, filepath.Join(dir, "b.qcow2"), 0)
	if err == nil || !strings.Contains(err.Error(), "qemu-utils") {
		t.Fatalf("missing qemu-img: error = %v, want a hint naming qemu-utils", err)
	}
}

// TestQcow2OverlayChain layers an overlay on a qcow2 overlay (e.g. a
// template kept as an overlay) and clones an overlay file.
func TestQcow2OverlayChain(t *testing.T) {
	requireTools(t, "qemu-img", "qemu-io", "mkfs.ext4")
	dir := t.TempDir()
	base := makeBase(t, dir, 32<<20, nil)
	baseSum := fileSum(t, base)
	for _, cache := range []bool{false, true} {
		t.Run(fmt.Sprintf("cache=%v", cache), func(t *testing.T) {
			s := newStore(t, cache)
			sub := t.TempDir()
			mid := filepath.Join(sub, "template.qcow2")
			if err := s.NewQcow2Overlay(t.Context(), base, FormatRaw, mid, 64<<20); err != nil {
				t.Fatal(err)
			}
			runTool(t, "qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 1M 1M", mid)
			midSum := fileSum(t, mid)

			top := filepath.Join(sub, "sandbox.qcow2")
			if err := s.NewQcow2Overlay(t.Context(), mid, FormatQcow2, top, 0); err != nil {
				t.Fatal(err)
			}
			if in := info(t, top); in.VirtualSize != 64<<20 || in.BackingFilename != mid || in.BackingFormat != "qcow2" {
				t.Fatalf("top overlay info %+v", in)
			}
			runTool(t, "qemu-io", "-f", "qcow2", "-c", "read -P 0x5a 1M 1M", top)
			runTool(t, "qemu-io", "-f", "qcow2", "-c", "write -P 0x77 1M 4k", top)
			if fileSum(t, mid) != midSum || fileSum(t, base) != baseSum {
				t.Fatal("a lower layer changed after writes through the top overlay")
			}
			if err := s.NewQcow2Overlay(t.Context(), mid, FormatQcow2, filepath.Join(sub, "small.qcow2"), 32<<20); err == nil {
				t.Fatal("overlay smaller than its qcow2 base accepted")
			}

			// Cloning an overlay file keeps its backing reference and content.
			clone := filepath.Join(sub, "snapshot-disk.qcow2")
			if _, err := s.CloneRaw(t.Context(), top, clone); err != nil {
				t.Fatal(err)
			}
			if in := info(t, clone); in.BackingFilename != mid {
				t.Fatalf("clone info %+v", in)
			}
			runTool(t, "qemu-io", "-f", "qcow2", "-c", "read -P 0x77 1M 4k", clone)
			runTool(t, "qemu-io", "-f", "qcow2", "-c", "read -P 0x5a 1536k 4k", clone)
		})
	}
}

func FuzzParseQcow2Size(f *testing.F) {
	hdr := make([]byte, 32)
	copy(hdr, "QFI\xfb")
	hdr[7] = 3
	hdr[29] = 1 // 16 MiB
	f.Add(hdr)
	f.Add([]byte("QFI"))
	f.Add(make([]byte, 64))
	f.Fuzz(func(t *testing.T, b []byte) {
		size, err := parseQcow2Size(b)
		if err == nil && (size <= 0 || size > 1<<62) {
			t.Fatalf("accepted size %d", size)
		}
	})
}

func TestQcow2OverlayConcurrent(t *testing.T) {
	requireTools(t, "qemu-img", "mkfs.ext4")
	dir := t.TempDir()
	base := makeBase(t, dir, 16<<20, nil)
	s := newStore(t, true)
	var wg sync.WaitGroup
	errs := make([]error, 10)
	for i := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = s.NewQcow2Overlay(t.Context(), base, FormatRaw, filepath.Join(dir, fmt.Sprintf("c%d.qcow2", i)), 256<<20)
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	for i := range errs {
		runTool(t, "qemu-img", "check", "-q", filepath.Join(dir, fmt.Sprintf("c%d.qcow2", i)))
	}
	if ents, _ := os.ReadDir(s.cacheDir); len(ents) != 1 {
		t.Fatalf("cache holds %d files, want 1", len(ents))
	}
}

// writeSparse makes a 64 MiB file with two data islands.
func writeSparse(t testing.TB, path string) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(64 << 20); err != nil {
		t.Fatal(err)
	}
	for _, island := range []struct{ off, n int64 }{{8 << 20, 1 << 20}, {40 << 20, 4096}, {64<<20 - 100, 100}} {
		b := make([]byte, island.n)
		rand.Read(b)
		if _, err := f.WriteAt(b, island.off); err != nil {
			t.Fatal(err)
		}
	}
}

func TestCloneRawSparse(t *testing.T) {
	dir := t.TempDir()
	base := filepath.Join(dir, "base.raw")
	writeSparse(t, base)
	s := newStore(t, false)
	dst := filepath.Join(dir, "clone.raw")
	method, err := s.CloneRaw(t.Context(), base, dst)
	if err != nil {
		t.Fatal(err)
	}
	a, _ := os.ReadFile(base)
	b, _ := os.ReadFile(dst)
	if !bytes.Equal(a, b) {
		t.Fatal("clone differs from base")
	}
	baseUse, _ := DiskUsage(base)
	cloneUse, _ := DiskUsage(dst)
	t.Logf("method %s: base uses %d bytes, clone %d bytes (apparent size 64 MiB)", method, baseUse, cloneUse)
	if method == CloneSparse && cloneUse > baseUse+256<<10 {
		t.Fatalf("sparse clone uses %d bytes, base %d: holes were filled", cloneUse, baseUse)
	}
	if _, err := s.CloneRaw(t.Context(), base, dst); err == nil {
		t.Fatal("clone over an existing file succeeded")
	}
	if _, err := s.CloneRaw(t.Context(), filepath.Join(dir, "missing"), filepath.Join(dir, "x")); err == nil {
		t.Fatal("clone of a missing base succeeded")
	}
	if _, err := os.Stat(filepath.Join(dir, "x")); !errors.Is(err, os.ErrNotExist) {
		t.Fatal("failed clone left a file behind")
	}
}

// TestCloneRawReflink runs CloneRaw on a loop-mounted XFS, which reflinks.
func TestCloneRawReflink(t *testing.T) {
	requireTools(t, "mkfs.xfs")
	testenv.Require(t, os.Geteuid() == 0, "needs root to loop-mount XFS")
	dir := t.TempDir()
	img := filepath.Join(dir, "xfs.img")
	f, _ := os.Create(img)
	f.Close()
	if err := os.Truncate(img, 512<<20); err != nil {
		t.Fatal(err)
	}
	runTool(t, "mkfs.xfs", "-q", "-m", "reflink=1", img)
	mnt := filepath.Join(dir, "mnt")
	os.Mkdir(mnt, 0o755)
	runTool(t, "mount", "-o", "loop", img, mnt)
	t.Cleanup(func() { runTool(t, "umount", mnt) })

	base := filepath.Join(mnt, "base.raw")
	b := make([]byte, 32<<20)
	rand.Read(b)
	if err := os.WriteFile(base, b, 0o644); err != nil {
		t.Fatal(err)
	}
	unix.Sync()
	var before, after unix.Statfs_t
	unix.Statfs(mnt, &before)
	s := newStore(t, false)
	dst := filepath.Join(mnt, "clone.raw")
	method, err := s.CloneRaw(t.Context(), base, dst)
	if err != nil {
		t.Fatal(err)
	}
	if method != CloneReflink {
		t.Fatalf("method %s on XFS, want reflink", method)
	}
	unix.Sync()
	unix.Statfs(mnt, &after)
	if used := int64(before.Bfree-after.Bfree) * before.Bsize; used > 1<<20 {
		t.Fatalf("reflink clone consumed %d bytes of free space", used)
	}
	// Writing to the clone leaves the base alone.
	if err := os.WriteFile(dst, []byte("changed"), 0o644); err != nil {
		t.Fatal(err)
	}
	got, _ := os.ReadFile(base)
	if !bytes.Equal(got, b) {
		t.Fatal("base changed after writing to its reflink clone")
	}
}

func TestFlatten(t *testing.T) {
	requireTools(t, "qemu-img", "mkfs.ext4", "e2fsck", "resize2fs", "debugfs")
	dir := t.TempDir()
	base := makeBase(t, dir, 128<<20, map[string]string{"hello.txt": "hello from the base\n"})
	s := newStore(t, true)
	ov := filepath.Join(dir, "sandbox.qcow2")
	if err := s.NewQcow2Overlay(t.Context(), base, FormatRaw, ov, 256<<20); err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(dir, "template.raw")
	size, err := s.Flatten(t.Context(), ov, FormatQcow2, dst)
	if err != nil {
		t.Fatal(err)
	}
	// Standalone: works without its base.
	if err := os.Remove(base); err != nil {
		t.Fatal(err)
	}
	if in := info(t, dst); in.Format != "raw" || in.BackingFilename != "" {
		t.Fatalf("flattened image info %+v", in)
	}
	runTool(t, "e2fsck", "-f", "-n", dst) // exit 0: clean
	fi, _ := os.Stat(dst)
	if fi.Size() != size {
		t.Fatalf("Flatten returned size %d, file is %d", size, fi.Size())
	}
	if fi.Size() >= 128<<20 {
		t.Fatalf("flattened image is %d bytes, not shrunk", fi.Size())
	}
	blocks, bs, err := readExt4Size(dst)
	if err != nil || int64(blocks)*int64(bs) != fi.Size() {
		t.Fatalf("file %d bytes, filesystem %d*%d (%v)", fi.Size(), blocks, bs, err)
	}
	if got := runTool(t, "debugfs", "-R", "cat /hello.txt", dst); !strings.Contains(got, "hello from the base") {
		t.Fatalf("file lost in flatten: %q", got)
	}
	t.Logf("flattened 128 MiB base to %d bytes", fi.Size())

	// Bad input.
	junk := filepath.Join(dir, "junk.raw")
	writeSparse(t, junk)
	for _, tc := range []struct {
		name, src string
		format    Format
		want      string
	}{
		{"not ext4", junk, FormatRaw, "not an ext2/3/4"},
		{"unknown format", ov, "vmdk", "unknown format"},
		{"missing", filepath.Join(dir, "missing"), FormatRaw, "no such file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out := filepath.Join(dir, "out-"+strings.ReplaceAll(tc.name, " ", "-"))
			_, err := s.Flatten(t.Context(), tc.src, tc.format, out)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error = %v, want containing %q", err, tc.want)
			}
			if _, err := os.Stat(out); !errors.Is(err, os.ErrNotExist) {
				t.Fatal("failed flatten left its output behind")
			}
		})
	}
}

func TestResize(t *testing.T) {
	requireTools(t, "qemu-img", "mkfs.ext4", "e2fsck", "resize2fs")
	dir := t.TempDir()
	base := makeBase(t, dir, 32<<20, nil)
	s := newStore(t, false)

	raw := filepath.Join(dir, "clone.raw")
	if _, err := s.CloneRaw(t.Context(), base, raw); err != nil {
		t.Fatal(err)
	}
	if err := s.Resize(t.Context(), raw, FormatRaw, 96<<20); err != nil {
		t.Fatal(err)
	}
	blocks, bs, err := readExt4Size(raw)
	if err != nil || int64(blocks)*int64(bs) != 96<<20 {
		t.Fatalf("filesystem after resize: %d*%d (%v), want 96 MiB", blocks, bs, err)
	}
	runTool(t, "e2fsck", "-f", "-n", raw)
	// Same size: nothing to do, and nothing may change.
	before := fileSum(t, raw)
	if err := s.Resize(t.Context(), raw, FormatRaw, 96<<20); err != nil {
		t.Fatal(err)
	}
	if fileSum(t, raw) != before {
		t.Fatal("same-size resize modified the image")
	}

	ov := filepath.Join(dir, "d.qcow2")
	if err := s.NewQcow2Overlay(t.Context(), base, FormatRaw, ov, 0); err != nil {
		t.Fatal(err)
	}
	if err := s.Resize(t.Context(), ov, FormatQcow2, 128<<20); err != nil {
		t.Fatal(err)
	}
	if in := info(t, ov); in.VirtualSize != 128<<20 {
		t.Fatalf("qcow2 virtual size %d after resize", in.VirtualSize)
	}

	for _, tc := range []struct {
		name, path string
		format     Format
		size       int64
		want       string
	}{
		{"shrink raw", raw, FormatRaw, 16 << 20, "shrinking"},
		{"zero size", raw, FormatRaw, 0, "positive multiple"},
		{"unaligned", raw, FormatRaw, 96<<20 + 3, "positive multiple"},
		{"unknown format", raw, "vhd", 96 << 20, "unknown format"},
		{"missing", filepath.Join(dir, "nope"), FormatRaw, 96 << 20, "no such file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := s.Resize(t.Context(), tc.path, tc.format, tc.size); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error = %v, want containing %q", err, tc.want)
			}
		})
	}
}

func TestDiskUsage(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "sparse")
	writeSparse(t, p)
	u, err := DiskUsage(p)
	if err != nil {
		t.Fatal(err)
	}
	if u < 1<<20 || u > 4<<20 {
		t.Fatalf("DiskUsage = %d, want about 1 MiB for a 64 MiB sparse file", u)
	}
	if _, err := DiskUsage(filepath.Join(dir, "missing")); err == nil {
		t.Fatal("no error for a missing file")
	}
}

func FuzzParseExt4Superblock(f *testing.F) {
	if _, err := exec.LookPath("mkfs.ext4"); err == nil {
		img := makeBase(f, f.TempDir(), 8<<20, nil)
		b, _ := os.ReadFile(img)
		f.Add(b[1024:2048])
	}
	sb := make([]byte, 1024)
	sb[0x38], sb[0x39] = 0x53, 0xEF
	sb[0x04] = 1
	f.Add(sb)
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, sb []byte) {
		blocks, bs, err := parseExt4Superblock(sb)
		if err != nil {
			if !errors.Is(err, ErrNotExt4) {
				t.Fatalf("error %v does not wrap ErrNotExt4", err)
			}
			return
		}
		if blocks == 0 || bs < 1024 || bs > 65536 {
			t.Fatalf("accepted blocks=%d bs=%d", blocks, bs)
		}
	})
}

// BenchmarkOverlay measures sandbox disk creation and the disk it uses.
func BenchmarkOverlay(b *testing.B) {
	requireTools(b, "qemu-img", "mkfs.ext4")
	dir := b.TempDir()
	base := makeBase(b, dir, 64<<20, nil)
	for _, bc := range []struct {
		name  string
		cache bool
	}{{"qemu-img", false}, {"cached", true}} {
		b.Run(bc.name, func(b *testing.B) {
			s := newStore(b, bc.cache)
			out := b.TempDir()
			var used int64
			i := 0
			for b.Loop() {
				dst := filepath.Join(out, fmt.Sprintf("d%d.qcow2", i))
				i++
				if err := s.NewQcow2Overlay(b.Context(), base, FormatRaw, dst, 1<<30); err != nil {
					b.Fatal(err)
				}
				u, _ := DiskUsage(dst)
				used += u
			}
			b.ReportMetric(float64(used)/float64(i), "disk-bytes/sandbox")
		})
	}
}

// BenchmarkCloneRaw measures the raw (Firecracker) path on this filesystem.
func BenchmarkCloneRaw(b *testing.B) {
	dir := b.TempDir()
	base := filepath.Join(dir, "base.raw")
	writeSparse(b, base)
	s := newStore(b, false)
	var used int64
	i := 0
	for b.Loop() {
		dst := filepath.Join(dir, fmt.Sprintf("c%d.raw", i))
		i++
		if _, err := s.CloneRaw(b.Context(), base, dst); err != nil {
			b.Fatal(err)
		}
		u, _ := DiskUsage(dst)
		used += u
	}
	b.ReportMetric(float64(used)/float64(i), "disk-bytes/sandbox")
}
