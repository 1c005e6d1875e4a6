package images

import (
	"bytes"
	"context"
	"crypto/sha256"
	"debug/elf"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/wrenn-dev/wrenn/internal/atomicfile"
)

// KernelKey is the cache key of the kernel this builder makes: a hash of the
// kconfig fragment, the patch, the recipe and the source tarball's version.
func (b *Builder) KernelKey() (string, error) {
	src, err := b.sourceID()
	if err != nil {
		return "", err
	}
	return kernelKey(src, KernelConfig, KernelPatch), nil
}

func kernelKey(sourceID string, config, patch []byte) string {
	return contentKey([]byte(kernelRecipeVersion), []byte(sourceID), config, patch)
}

// sourceID names the kernel source: the Debian package version when dpkg
// knows the tarball's package, else the tarball's size and mtime.
func (b *Builder) sourceID() (string, error) {
	st, err := os.Stat(b.cfg.KernelSource)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return "", fmt.Errorf("kernel source %s not found: install Debian's linux-source-6.1 package (apt-get install linux-source-6.1)", b.cfg.KernelSource)
		}
		return "", fmt.Errorf("stat kernel source: %w", err)
	}
	pkg := strings.TrimSuffix(strings.TrimSuffix(filepath.Base(b.cfg.KernelSource), ".xz"), ".tar")
	if out, err := exec.Command("dpkg-query", "-W", "-f=${Version}", pkg).Output(); err == nil {
		if v := sanitizeVersion(string(out)); v != "" {
			return v, nil
		}
	}
	return fmt.Sprintf("f%d-%d", st.Size(), st.ModTime().Unix()), nil
}

func sanitizeVersion(v string) string {
	v = strings.TrimSpace(v)
	var sb strings.Builder
	for _, r := range v {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '.', r == '-', r == '+', r == '~':
			sb.WriteRune(r)
		default:
			sb.WriteRune('_')
		}
	}
	return sb.String()
}

func (b *Builder) buildKernel(ctx context.Context) (key, path string, built bool, err error) {
	log := b.cfg.Logger
	srcID, err := b.sourceID()
	if err != nil {
		return "", "", false, err
	}
	key = kernelKey(srcID, KernelConfig, KernelPatch)
	path = b.paths.KernelFile(key)
	if err := os.MkdirAll(b.paths.KernelsDir(), 0o755); err != nil {
		return "", "", false, fmt.Errorf("create kernels dir: %w", err)
	}
	if fileExists(path) {
		log.Info("kernel up to date", "key", key, "path", path)
		return key, path, false, atomicfile.Symlink(filepath.Base(path), b.paths.Kernel())
	}
	if b.cfg.ReuseKernelFrom != "" {
		other := NewPaths(b.cfg.ReuseKernelFrom).KernelFile(key)
		if fileExists(other) {
			if err := os.Link(other, path); err != nil {
				if err := copyFile(other, path, 0o644); err != nil {
					return "", "", false, fmt.Errorf("reuse kernel %s: %w", other, err)
				}
			}
			log.Info("kernel reused", "key", key, "from", other)
			return key, path, false, atomicfile.Symlink(filepath.Base(path), b.paths.Kernel())
		}
	}

	start := time.Now()
	log.Info("kernel: building from Debian's linux-source (about 5 minutes on 2 cores, once)", "key", key, "source", b.cfg.KernelSource)
	srcDir, err := b.prepareSource(ctx, srcID)
	if err != nil {
		return "", "", false, err
	}
	frag := filepath.Join(filepath.Dir(srcDir), "microvm-"+key+".config")
	if err := os.WriteFile(frag, KernelConfig, 0o644); err != nil {
		return "", "", false, fmt.Errorf("write config fragment: %w", err)
	}
	steps := []struct {
		what string
		args []string
	}{
		{"make tinyconfig", []string{"make", "tinyconfig"}},
		{"merge microVM fragment", []string{"scripts/kconfig/merge_config.sh", "-m", ".config", frag}},
		{"make olddefconfig", []string{"make", "olddefconfig"}},
		{"make vmlinux", []string{"make", "-j" + strconv.Itoa(b.cfg.Jobs), "vmlinux"}},
	}
	for _, s := range steps {
		t := time.Now()
		log.Info("kernel: "+s.what, "dir", srcDir)
		// The compile takes minutes: report how many objects are built so
		// far, so a long quiet step does not look hung.
		progress := newCompileProgress()
		stop := progress.report(log, "kernel: compiling", 15*time.Second)
		err := b.run(ctx, srcDir, progress, s.args...)
		stop()
		if err != nil {
			return "", "", false, fmt.Errorf("%s: %w", s.what, err)
		}
		log.Debug("kernel: step done", "step", s.what, "took", time.Since(t).Round(time.Millisecond))
	}
	vmlinux := filepath.Join(srcDir, "vmlinux")
	if err := checkPVH(vmlinux); err != nil {
		return "", "", false, err
	}
	if err := copyFile(vmlinux, path, 0o644); err != nil {
		return "", "", false, fmt.Errorf("install vmlinux: %w", err)
	}
	if err := atomicfile.Symlink(filepath.Base(path), b.paths.Kernel()); err != nil {
		return "", "", false, err
	}
	log.Info("kernel built", "key", key, "path", path, "took", time.Since(start).Round(time.Second))
	return key, path, true, nil
}

// prepareSource extracts and patches the tarball once; a stamp file records
// the patch so a changed patch re-extracts a clean tree.
func (b *Builder) prepareSource(ctx context.Context, srcID string) (string, error) {
	base := filepath.Join(b.paths.CacheDir(), "kernel")
	srcDir := filepath.Join(base, "src-"+srcID)
	stamp := filepath.Join(srcDir, ".wrenn-prepared")
	sum := sha256.Sum256(KernelPatch)
	want := hex.EncodeToString(sum[:])
	if got, err := os.ReadFile(stamp); err == nil && strings.TrimSpace(string(got)) == want {
		return srcDir, nil
	}
	if err := os.RemoveAll(srcDir); err != nil {
		return "", fmt.Errorf("remove stale kernel tree: %w", err)
	}
	if err := os.MkdirAll(base, 0o755); err != nil {
		return "", fmt.Errorf("create kernel cache: %w", err)
	}
	tmp, err := os.MkdirTemp(base, "extract-")
	if err != nil {
		return "", fmt.Errorf("create extract dir: %w", err)
	}
	defer os.RemoveAll(tmp)
	b.cfg.Logger.Info("kernel: extracting source", "tarball", b.cfg.KernelSource)
	if err := b.run(ctx, tmp, io.Discard, "tar", "-xJf", b.cfg.KernelSource); err != nil {
		return "", fmt.Errorf("extract kernel source: %w", err)
	}
	entries, err := os.ReadDir(tmp)
	if err != nil || len(entries) != 1 || !entries[0].IsDir() {
		return "", fmt.Errorf("kernel tarball %s: expected one top-level directory", b.cfg.KernelSource)
	}
	tree := filepath.Join(tmp, entries[0].Name())
	cmd := exec.CommandContext(ctx, "patch", "-p1", "--forward", "--batch")
	cmd.Dir = tree
	cmd.Stdin = bytes.NewReader(KernelPatch)
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("apply kernel patch: %w: %s", err, out)
	}
	if err := os.WriteFile(filepath.Join(tree, ".wrenn-prepared"), []byte(want+"\n"), 0o644); err != nil {
		return "", fmt.Errorf("write stamp: %w", err)
	}
	if err := os.Rename(tree, srcDir); err != nil {
		return "", fmt.Errorf("install kernel tree: %w", err)
	}
	return srcDir, nil
}

// run executes a build tool, streaming its output to cfg.Output and keeping
// the tail for the error message.
func (b *Builder) run(ctx context.Context, dir string, progress io.Writer, args ...string) error {
	tail := &tailBuffer{max: 4096}
	cmd := exec.CommandContext(ctx, args[0], args[1:]...)
	cmd.Dir = dir
	w := io.MultiWriter(b.cfg.Output, tail, progress)
	cmd.Stdout, cmd.Stderr = w, w
	cmd.WaitDelay = 5 * time.Second
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%s: %w\n%s", strings.Join(args, " "), err, tail.String())
	}
	return nil
}

type tailBuffer struct {
	mu  sync.Mutex
	max int
	buf []byte
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf = append(t.buf, p...)
	if len(t.buf) > t.max {
		t.buf = append([]byte(nil), t.buf[len(t.buf)-t.max:]...)
	}
	return len(p), nil
}

func (t *tailBuffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return string(t.buf)
}

// checkPVH verifies the ELF carries the Xen PVH entry note QEMU's microvm
// machine boots through.
func checkPVH(path string) error {
	ok, err := HasPVHNote(path)
	if err != nil {
		return err
	}
	if !ok {
		return fmt.Errorf("%s has no PVH entry note (CONFIG_PVH missing?)", path)
	}
	return nil
}

// HasPVHNote reports whether the ELF file at path has a XEN_ELFNOTE_PHYS32_ENTRY note.
func HasPVHNote(path string) (bool, error) {
	f, err := elf.Open(path)
	if err != nil {
		return false, fmt.Errorf("open kernel ELF %s: %w", path, err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type != elf.PT_NOTE {
			continue
		}
		data := make([]byte, p.Filesz)
		if _, err := p.ReadAt(data, 0); err != nil {
			return false, fmt.Errorf("read notes of %s: %w", path, err)
		}
		if hasXenPVHNote(data, f.ByteOrder) {
			return true, nil
		}
	}
	return false, nil
}

// hasXenPVHNote walks an ELF note segment looking for name "Xen", type 18.
func hasXenPVHNote(data []byte, bo binary.ByteOrder) bool {
	const xenElfnotePhys32Entry = 18
	for len(data) >= 12 {
		namesz := uint64(bo.Uint32(data[0:4]))
		descsz := uint64(bo.Uint32(data[4:8]))
		typ := bo.Uint32(data[8:12])
		data = data[12:]
		nameEnd := (namesz + 3) &^ 3
		descEnd := (descsz + 3) &^ 3
		if nameEnd > uint64(len(data)) || nameEnd+descEnd > uint64(len(data)) {
			return false
		}
		name := strings.TrimRight(string(data[:namesz]), "\x00")
		if name == "Xen" && typ == xenElfnotePhys32Entry {
			return true
		}
		data = data[nameEnd+descEnd:]
	}
	return false
}

func fileExists(path string) bool {
	st, err := os.Stat(path)
	return err == nil && st.Mode().IsRegular() && st.Size() > 0
}

// compileProgress counts the objects kbuild reports ("  CC  path.o" lines).
type compileProgress struct {
	mu      sync.Mutex
	objects int
	partial []byte
}

func newCompileProgress() *compileProgress { return &compileProgress{} }

func (p *compileProgress) Write(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	data := append(p.partial, b...)
	for {
		i := bytes.IndexByte(data, '\n')
		if i < 0 {
			break
		}
		if bytes.HasPrefix(bytes.TrimLeft(data[:i], " "), []byte("CC ")) {
			p.objects++
		}
		data = data[i+1:]
	}
	p.partial = append(p.partial[:0], data...)
	return len(b), nil
}

func (p *compileProgress) count() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.objects
}

// report logs the count every interval until the returned stop is called.
func (p *compileProgress) report(log *slog.Logger, msg string, interval time.Duration) (stop func()) {
	done := make(chan struct{})
	start := time.Now()
	go func() {
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				if n := p.count(); n > 0 {
					log.Info(msg, "objects", n, "elapsed", time.Since(start).Round(time.Second))
				}
			}
		}
	}()
	return func() { close(done) }
}
