// Package storage makes per-sandbox root disks from a shared read-only base
// without copying it: qcow2 overlays for QEMU, reflinks (or sparse copies
// when the filesystem cannot reflink) for Firecracker's raw drives. It also
// flattens a sandbox disk into a standalone, shrunk raw image for templates.
//
// External tools: qemu-img (Debian qemu-utils), e2fsck and resize2fs
// (e2fsprogs).
package storage

import (
	"bytes"
	"context"
	"crypto/sha256"
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
	"sync"
	"syscall"

	"github.com/wrenn-dev/wrenn/internal/agent/fileclone"
	"github.com/wrenn-dev/wrenn/internal/atomicfile"
)

// Format is a disk image format.
type Format string

const (
	FormatQcow2 Format = "qcow2"
	FormatRaw   Format = "raw"
)

// CloneMethod tells how CloneRaw made its copy.
type CloneMethod = fileclone.Method

const (
	// CloneReflink: the copy shares every block with the base (FICLONE);
	// nothing was copied.
	CloneReflink = fileclone.Reflink
	// CloneSparse: the filesystem cannot reflink; the base's data extents
	// were copied and its holes kept as holes.
	CloneSparse = fileclone.Sparse
)

// Config configures a Store. Zero fields take defaults.
type Config struct {
	// QemuImg, E2fsck, Resize2fs are tool paths; default: looked up in PATH.
	QemuImg   string
	E2fsck    string
	Resize2fs string
	// CacheDir keeps one pre-made empty overlay per (base, size): creating
	// an overlay is then a 200 KB file copy instead of a qemu-img run.
	// Empty disables the cache.
	CacheDir string
	Logger   *slog.Logger
}

// Store creates and transforms disk images. Safe for concurrent use.
type Store struct {
	qemuImg, e2fsck, resize2fs string
	cacheDir                   string
	log                        *slog.Logger

	mu       sync.Mutex
	inflight map[string]*sync.Mutex // per cache key, so one qemu-img run fills it
}

// New returns a Store. Missing tools are reported when first needed, with
// the package that provides them.
func New(cfg Config) (*Store, error) {
	s := &Store{
		qemuImg:   orDefault(cfg.QemuImg, "qemu-img"),
		e2fsck:    orDefault(cfg.E2fsck, "e2fsck"),
		resize2fs: orDefault(cfg.Resize2fs, "resize2fs"),
		cacheDir:  cfg.CacheDir,
		log:       cfg.Logger,
		inflight:  make(map[string]*sync.Mutex),
	}
	if s.log == nil {
		s.log = slog.Default()
	}
	if s.cacheDir != "" {
		if err := os.MkdirAll(s.cacheDir, 0o755); err != nil {
			return nil, fmt.Errorf("overlay cache dir: %w", err)
		}
	}
	return s, nil
}

// NewQcow2Overlay creates dst, a qcow2 image of sizeBytes whose unwritten
// blocks read from base, a raw or qcow2 image in baseFormat. base is
// referenced by absolute path, so it must stay where it is and must not
// change while overlays use it. sizeBytes 0 means the base's virtual size;
// it may not be smaller. dst must not exist. The base is never copied or
// written.
//
// baseFormat is explicit, never probed: qemu would otherwise guess it from
// content, which a guest may have written.
func (s *Store) NewQcow2Overlay(ctx context.Context, base string, baseFormat Format, dst string, sizeBytes int64) error {
	base, err := filepath.Abs(base)
	if err != nil {
		return fmt.Errorf("overlay: base path: %w", err)
	}
	fi, err := os.Stat(base)
	if err != nil {
		return fmt.Errorf("overlay: base image: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("overlay: base %s is not a regular file", base)
	}
	baseSize, err := virtualSize(base, baseFormat, fi.Size())
	if err != nil {
		return fmt.Errorf("overlay: %w", err)
	}
	if sizeBytes == 0 {
		sizeBytes = baseSize
	}
	if sizeBytes < baseSize {
		return fmt.Errorf("overlay: size %d is smaller than base %s (%d bytes)", sizeBytes, base, baseSize)
	}
	if sizeBytes%512 != 0 {
		return fmt.Errorf("overlay: size %d is not a multiple of 512", sizeBytes)
	}
	if dst == "" {
		return errors.New("overlay: empty destination path")
	}
	// A leftover disk of the same name is a bug upstream: never reuse it.
	if _, err := os.Lstat(dst); err == nil {
		return fmt.Errorf("overlay: %s already exists", dst)
	}
	if s.cacheDir == "" {
		return s.qemuImgCreate(ctx, base, baseFormat, dst, sizeBytes)
	}
	tmpl, err := s.cachedOverlay(ctx, base, baseFormat, sizeBytes)
	if err != nil {
		return err
	}
	if err := copyFile(tmpl, dst, 0o644); err != nil {
		return fmt.Errorf("overlay: copy pre-made overlay: %w", err)
	}
	return nil
}

// virtualSize is the disk size a guest sees: the file size for raw, the
// header's size field for qcow2.
func virtualSize(path string, format Format, fileSize int64) (int64, error) {
	switch format {
	case FormatRaw:
		return fileSize, nil
	case FormatQcow2:
		f, err := os.Open(path)
		if err != nil {
			return 0, err
		}
		defer f.Close()
		hdr := make([]byte, 32)
		if _, err := io.ReadFull(f, hdr); err != nil {
			return 0, fmt.Errorf("%s: read qcow2 header: %w", path, err)
		}
		return parseQcow2Size(hdr)
	default:
		return 0, fmt.Errorf("unknown base format %q (want raw or qcow2)", format)
	}
}

// parseQcow2Size reads the virtual size from a qcow2 header (magic
// "QFI\xfb", version 2 or 3, size as a big-endian uint64 at offset 24).
func parseQcow2Size(hdr []byte) (int64, error) {
	if len(hdr) < 32 || string(hdr[:4]) != "QFI\xfb" {
		return 0, errors.New("not a qcow2 image")
	}
	if v := binary.BigEndian.Uint32(hdr[4:]); v != 2 && v != 3 {
		return 0, fmt.Errorf("qcow2 version %d not supported", v)
	}
	size := binary.BigEndian.Uint64(hdr[24:])
	if size == 0 || size > 1<<62 {
		return 0, fmt.Errorf("qcow2 virtual size %d out of range", size)
	}
	return int64(size), nil
}

// cachedOverlay returns the pre-made empty overlay for (base, size),
// creating it on first use. Its content depends only on the backing path,
// the format and the size, never on the base's content.
func (s *Store) cachedOverlay(ctx context.Context, base string, baseFormat Format, size int64) (string, error) {
	h := sha256.Sum256([]byte(base + "\x00" + string(baseFormat) + "\x00" + strconv.FormatInt(size, 10)))
	key := hex.EncodeToString(h[:12])
	path := filepath.Join(s.cacheDir, "overlay-"+key+".qcow2")

	s.mu.Lock()
	l, ok := s.inflight[key]
	if !ok {
		l = &sync.Mutex{}
		s.inflight[key] = l
	}
	s.mu.Unlock()
	l.Lock()
	defer l.Unlock()

	if _, err := os.Stat(path); err == nil {
		return path, nil
	}
	// The temporary name is unique even across Stores and agents sharing
	// the cache directory.
	f, err := atomicfile.New(path, 0o644)
	if err != nil {
		return "", fmt.Errorf("overlay cache: %w", err)
	}
	defer f.Abort()
	if err := s.qemuImgCreate(ctx, base, baseFormat, f.TempName(), size); err != nil {
		return "", err
	}
	if err := f.Commit(); err != nil {
		return "", fmt.Errorf("overlay cache: %w", err)
	}
	return path, nil
}

func (s *Store) qemuImgCreate(ctx context.Context, base string, baseFormat Format, dst string, size int64) error {
	_, err := s.run(ctx, s.qemuImg, "qemu-utils", "create", "-q", "-f", "qcow2", "-F", string(baseFormat), "-b", base, dst, strconv.FormatInt(size, 10))
	if err != nil {
		os.Remove(dst)
		return fmt.Errorf("overlay: %w", err)
	}
	return nil
}

// CloneRaw makes dst a copy of the file base for VMMs that need raw drives
// (Firecracker): a reflink when the filesystem supports it (no data copied,
// blocks shared copy-on-write), else a sparse copy. dst must not exist.
// It copies the file as it is, so it also clones a qcow2 overlay (keeping
// its backing reference), e.g. to keep a sandbox's disk for a snapshot.
func (s *Store) CloneRaw(ctx context.Context, base, dst string) (CloneMethod, error) {
	if err := ctx.Err(); err != nil {
		return "", fmt.Errorf("clone: %w", err)
	}
	src, err := os.Open(base)
	if err != nil {
		return "", fmt.Errorf("clone: base image: %w", err)
	}
	defer src.Close()
	fi, err := src.Stat()
	if err != nil {
		return "", fmt.Errorf("clone: stat base: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return "", fmt.Errorf("clone: base %s is not a regular file", base)
	}
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return "", fmt.Errorf("clone: create %s: %w", dst, err)
	}
	method, err := fileclone.Into(ctx, src, out, fi.Size())
	if cerr := out.Close(); err == nil && cerr != nil {
		err = cerr
	}
	if err != nil {
		os.Remove(dst)
		return "", fmt.Errorf("clone %s to %s: %w", base, dst, err)
	}
	return method, nil
}

// copyFile copies a small file (the pre-made overlay) to a new path,
// reflinking when possible. dst must not exist; on failure it is removed.
func copyFile(src, dst string, perm os.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	fi, err := in.Stat()
	if err != nil {
		return err
	}
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, perm)
	if err != nil {
		return err
	}
	_, err = fileclone.Into(context.Background(), in, out, fi.Size())
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(dst)
	}
	return err
}

// Resize grows a disk image to sizeBytes. For raw images holding ext4 the
// filesystem is grown too (offline: the image must not be in use). A qcow2
// image only gets a larger virtual disk; the guest grows its filesystem.
// Shrinking is refused.
func (s *Store) Resize(ctx context.Context, path string, format Format, sizeBytes int64) error {
	fi, err := os.Stat(path)
	if err != nil {
		return fmt.Errorf("resize: %w", err)
	}
	if sizeBytes <= 0 || sizeBytes%512 != 0 {
		return fmt.Errorf("resize %s: size %d must be a positive multiple of 512", path, sizeBytes)
	}
	switch format {
	case FormatQcow2:
		if _, err := s.run(ctx, s.qemuImg, "qemu-utils", "resize", "-q", "-f", "qcow2", path, strconv.FormatInt(sizeBytes, 10)); err != nil {
			return fmt.Errorf("resize %s: %w", path, err)
		}
		return nil
	case FormatRaw:
		if sizeBytes < fi.Size() {
			return fmt.Errorf("resize %s: %d is smaller than the image (%d); shrinking is not supported", path, sizeBytes, fi.Size())
		}
		if sizeBytes == fi.Size() {
			return nil // skip a needless fsck of the whole image
		}
		if err := os.Truncate(path, sizeBytes); err != nil {
			return fmt.Errorf("resize %s: %w", path, err)
		}
		if _, _, err := readExt4Size(path); err != nil {
			return nil // not ext4: the larger disk is all we can do
		}
		if err := s.fsck(ctx, path); err != nil {
			return fmt.Errorf("resize %s: %w", path, err)
		}
		if _, err := s.run(ctx, s.resize2fs, "e2fsprogs", path); err != nil {
			return fmt.Errorf("resize %s: %w", path, err)
		}
		return nil
	default:
		return fmt.Errorf("resize %s: unknown format %q", path, format)
	}
}

// Flatten writes dst, a standalone raw image with the content of overlay
// (backing chain included), checks its ext4 filesystem and shrinks it to
// the minimum, for use as a template base. dst appears atomically, complete
// or not at all. It returns dst's size in bytes.
//
// The format is explicit on purpose: probing a raw disk a guest wrote to
// would let the guest forge a qcow2 header naming a host file as backing.
func (s *Store) Flatten(ctx context.Context, overlay string, format Format, dst string) (int64, error) {
	if format != FormatQcow2 && format != FormatRaw {
		return 0, fmt.Errorf("flatten %s: unknown format %q", overlay, format)
	}
	if _, err := os.Stat(overlay); err != nil {
		return 0, fmt.Errorf("flatten: %w", err)
	}
	f, err := atomicfile.New(dst, 0o644)
	if err != nil {
		return 0, fmt.Errorf("flatten %s: %w", overlay, err)
	}
	defer f.Abort()
	tmp := f.TempName()
	if _, err := s.run(ctx, s.qemuImg, "qemu-utils", "convert", "-f", string(format), "-O", "raw", overlay, tmp); err != nil {
		return 0, fmt.Errorf("flatten %s: %w", overlay, err)
	}
	if _, _, err := readExt4Size(tmp); err != nil {
		return 0, fmt.Errorf("flatten %s: %w", overlay, err)
	}
	if err := s.fsck(ctx, tmp); err != nil {
		return 0, fmt.Errorf("flatten %s: %w", overlay, err)
	}
	if _, err := s.run(ctx, s.resize2fs, "e2fsprogs", "-M", tmp); err != nil {
		return 0, fmt.Errorf("flatten %s: shrink: %w", overlay, err)
	}
	// resize2fs shrinks the filesystem, not the file: cut the file to it.
	blocks, bsize, err := readExt4Size(tmp)
	if err != nil {
		return 0, fmt.Errorf("flatten %s: %w", overlay, err)
	}
	size := int64(blocks) * int64(bsize)
	if err := os.Truncate(tmp, size); err != nil {
		return 0, fmt.Errorf("flatten %s: truncate: %w", overlay, err)
	}
	if err := f.Commit(); err != nil {
		return 0, fmt.Errorf("flatten %s: %w", overlay, err)
	}
	return size, nil
}

// fsck runs e2fsck -fy; exit 1 ("errors corrected") is success.
func (s *Store) fsck(ctx context.Context, path string) error {
	_, err := s.run(ctx, s.e2fsck, "e2fsprogs", "-f", "-y", path)
	var ee *exec.ExitError
	if errors.As(err, &ee) && ee.ExitCode() == 1 {
		s.log.WarnContext(ctx, "storage: e2fsck corrected errors", "image", path)
		return nil
	}
	if err != nil {
		return fmt.Errorf("fsck: %w", err)
	}
	return nil
}

// run executes a tool and returns its output; errors carry stderr and,
// when the tool is missing, the package to install.
func (s *Store) run(ctx context.Context, tool, pkg string, args ...string) ([]byte, error) {
	path, err := exec.LookPath(tool)
	if err != nil {
		return nil, fmt.Errorf("%s not found (install Debian package %s): %w", tool, pkg, err)
	}
	cmd := exec.CommandContext(ctx, path, args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return out, fmt.Errorf("%s %v: %w: %s", filepath.Base(tool), args, err, bytes.TrimSpace(stderr.Bytes()))
	}
	return out, nil
}

// ErrNotExt4 is returned for images that hold no ext2/3/4 filesystem.
var ErrNotExt4 = errors.New("not an ext2/3/4 filesystem image")

// readExt4Size reads the block count and block size from an ext4
// superblock (1024 bytes in).
func readExt4Size(path string) (blocks uint64, blockSize uint32, err error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, 0, err
	}
	defer f.Close()
	sb := make([]byte, 1024)
	if _, err := f.ReadAt(sb, 1024); err != nil {
		return 0, 0, fmt.Errorf("%s: read superblock: %w", path, ErrNotExt4)
	}
	return parseExt4Superblock(sb)
}

// parseExt4Superblock decodes the size fields of an ext2/3/4 superblock.
func parseExt4Superblock(sb []byte) (blocks uint64, blockSize uint32, err error) {
	if len(sb) < 0x158 {
		return 0, 0, fmt.Errorf("superblock: %d bytes: %w", len(sb), ErrNotExt4)
	}
	le := binary.LittleEndian
	if le.Uint16(sb[0x38:]) != 0xEF53 {
		return 0, 0, ErrNotExt4
	}
	logBS := le.Uint32(sb[0x18:])
	if logBS > 6 { // 1 KiB << 6 = 64 KiB, the largest ext4 block
		return 0, 0, fmt.Errorf("superblock: block size 2^(10+%d): %w", logBS, ErrNotExt4)
	}
	blocks = uint64(le.Uint32(sb[0x04:]))
	const featureIncompat64bit = 0x80
	if le.Uint32(sb[0x60:])&featureIncompat64bit != 0 {
		blocks |= uint64(le.Uint32(sb[0x150:])) << 32
	}
	if blocks == 0 {
		return 0, 0, fmt.Errorf("superblock: zero blocks: %w", ErrNotExt4)
	}
	return blocks, 1024 << logBS, nil
}

// DiskUsage returns the bytes a file really occupies on disk (allocated
// blocks), which for sparse files and overlays is far below their size.
func DiskUsage(path string) (int64, error) {
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		return 0, fmt.Errorf("disk usage %s: %w", path, err)
	}
	return st.Blocks * 512, nil
}

func orDefault(v, def string) string {
	if v == "" {
		return def
	}
	return v
}
