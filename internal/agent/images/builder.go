package images

import (
	"context"
	"crypto/sha256"
	_ "embed"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"syscall"
	"time"

	"github.com/wrenn-dev/wrenn/internal/agent/fileclone"
)

// KernelConfig is the kconfig fragment merged on top of `make tinyconfig`.
//
//go:embed microvm-kernel.config
var KernelConfig []byte

// KernelPatch is applied to the kernel source before configuring it: it adds
// a lapic_timer_period= boot parameter and skips poisoning freed init memory,
// two changes that each save ~250 ms of boot under QEMU TCG.
//
//go:embed microvm-kernel.patch
var KernelPatch []byte

// Bumped when the build recipe changes in a way the inputs do not show.
const (
	kernelRecipeVersion = "1"
	rootfsRecipeVersion = "3"
)

// Config configures a Builder. Zero values take the documented defaults.
type Config struct {
	// WrennDir is where images are installed (default DirFromEnv()).
	WrennDir string
	// EnvdPath is a prebuilt, statically linked envd binary. Required for
	// the root filesystem (see BuildEnvd).
	EnvdPath string
	// KernelSource is Debian's linux-source tarball.
	KernelSource string
	// BusyboxPath is a static busybox (Debian's busybox-static).
	BusyboxPath string
	// BashPath is a static bash (Debian's bash-static), installed as
	// /bin/bash: E2B's SDKs run commands through `/bin/bash -l -c`.
	BashPath string
	// CACertsPath is the CA bundle installed into the image.
	CACertsPath string
	// RootfsSizeMiB is the (sparse) size of the ext4 image.
	RootfsSizeMiB int
	// Jobs is make's -j (default: number of CPUs).
	Jobs int
	// ReuseKernelFrom is another WRENN_DIR whose kernel is hard-linked (or
	// copied) when it was built with the same key, so tests do not rebuild it.
	ReuseKernelFrom string
	// SkipKernel builds only the root filesystem.
	SkipKernel bool
	// Base also builds the base template (Debian, BaseTemplate): its
	// packages come from DebianMirror once per recipe (minutes), then are
	// cached under WRENN_DIR/cache. Needs root and mmdebstrap.
	Base bool
	// DebianMirror and DebianSuite are where the base template's packages
	// come from (default deb.debian.org, bookworm).
	DebianMirror string
	DebianSuite  string
	// BaseSizeMiB is the (sparse) size of the base template's ext4 image.
	BaseSizeMiB int
	// Logger receives one line per step (default slog.Default()).
	Logger *slog.Logger
	// Output receives the output of the tools (make, mkfs); nil discards it.
	Output io.Writer
}

func (c *Config) setDefaults() {
	if c.WrennDir == "" {
		c.WrennDir = DirFromEnv()
	}
	if c.KernelSource == "" {
		c.KernelSource = "/usr/src/linux-source-6.1.tar.xz"
	}
	if c.BusyboxPath == "" {
		c.BusyboxPath = "/bin/busybox"
	}
	if c.BashPath == "" {
		c.BashPath = "/bin/bash-static"
	}
	if c.CACertsPath == "" {
		c.CACertsPath = "/etc/ssl/certs/ca-certificates.crt"
	}
	if c.RootfsSizeMiB <= 0 {
		c.RootfsSizeMiB = 1024
	}
	if c.DebianMirror == "" {
		c.DebianMirror = "http://deb.debian.org/debian"
	}
	if c.DebianSuite == "" {
		c.DebianSuite = "bookworm"
	}
	if c.BaseSizeMiB <= 0 {
		// As minimal: a sandbox asks for more with disk_mb (the guest grows
		// its filesystem), and a template row cannot ask for less.
		c.BaseSizeMiB = 1024
	}
	if c.Jobs <= 0 {
		c.Jobs = runtime.NumCPU()
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.Output == nil {
		c.Output = io.Discard
	}
}

// Builder makes the kernel, the minimal template and (Config.Base) the base template.
type Builder struct {
	cfg   Config
	paths Paths
}

// NewBuilder returns a Builder for cfg.
func NewBuilder(cfg Config) *Builder {
	cfg.setDefaults()
	return &Builder{cfg: cfg, paths: NewPaths(cfg.WrennDir)}
}

// Paths returns the layout the builder installs into.
func (b *Builder) Paths() Paths { return b.paths }

// Result says what Build produced.
type Result struct {
	KernelPath  string
	KernelKey   string
	KernelBuilt bool // false: it was already there
	RootfsPath  string
	RootfsKey   string
	RootfsBuilt bool
	// Base* are set when Config.Base asked for the base template.
	BasePath  string
	BaseKey   string
	BaseBuilt bool
}

// Build makes whatever is missing or out of date; a second run is a no-op.
// Concurrent builders on one WRENN_DIR serialise on a lock file.
func (b *Builder) Build(ctx context.Context) (Result, error) {
	var res Result
	if err := os.MkdirAll(b.paths.Dir, 0o755); err != nil {
		return res, fmt.Errorf("create %s: %w", b.paths.Dir, err)
	}
	unlock, err := lockDir(ctx, filepath.Join(b.paths.Dir, ".images.lock"))
	if err != nil {
		return res, err
	}
	defer unlock()

	start := time.Now()
	if !b.cfg.SkipKernel {
		res.KernelKey, res.KernelPath, res.KernelBuilt, err = b.buildKernel(ctx)
		if err != nil {
			return res, fmt.Errorf("kernel: %w", err)
		}
	} else if k, kerr := b.KernelKey(); kerr == nil {
		res.KernelKey = k
	}
	res.RootfsKey, res.RootfsPath, res.RootfsBuilt, err = b.buildRootfs(ctx, res.KernelKey)
	if err != nil {
		return res, fmt.Errorf("rootfs: %w", err)
	}
	if b.cfg.Base {
		res.BaseKey, res.BasePath, res.BaseBuilt, err = b.buildBase(ctx, res.KernelKey)
		if err != nil {
			return res, fmt.Errorf("base template: %w", err)
		}
	}
	b.cfg.Logger.Info("images ready", "dir", b.paths.Dir, "kernel", res.KernelPath,
		"rootfs", res.RootfsPath, "took", time.Since(start).Round(time.Millisecond))
	return res, nil
}

// lockDir takes an exclusive flock, polling so ctx can cancel the wait.
func lockDir(ctx context.Context, path string) (func(), error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open lock %s: %w", path, err)
	}
	for {
		err = syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			return func() { _ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN); _ = f.Close() }, nil
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) {
			_ = f.Close()
			return nil, fmt.Errorf("lock %s: %w", path, err)
		}
		select {
		case <-ctx.Done():
			_ = f.Close()
			return nil, fmt.Errorf("wait for lock %s: %w", path, ctx.Err())
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// contentKey is the cache key of a build's inputs: 16 hex digits of a
// SHA-256 over the parts, each length-prefixed so concatenations cannot
// collide.
func contentKey(parts ...[]byte) string {
	h := sha256.New()
	for _, part := range parts {
		_ = binary.Write(h, binary.BigEndian, uint64(len(part)))
		h.Write(part)
	}
	return hex.EncodeToString(h.Sum(nil))[:16]
}

func hashFile(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", fmt.Errorf("read %s: %w", path, err)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// copyFile copies src to dst through a temporary file renamed into place
// (a reflink where the filesystem allows).
func copyFile(src, dst string, mode os.FileMode) error {
	_, err := fileclone.Atomic(context.Background(), src, dst, mode)
	return err
}
