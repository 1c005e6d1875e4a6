// Package fileclone copies disk and memory images without paying for what
// they do not hold: a reflink (FICLONE) where the filesystem shares extents,
// else a copy of the data ranges only (SEEK_DATA/SEEK_HOLE), so holes stay
// holes. Storage and both VMM drivers copy images through it.
package fileclone

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"

	"golang.org/x/sys/unix"

	"github.com/wrenn-dev/wrenn/internal/atomicfile"
)

// Method says how a copy was made.
type Method string

const (
	// Reflink shares the source's blocks copy-on-write; nothing is copied.
	Reflink Method = "reflink"
	// Sparse copied the data ranges and kept the holes.
	Sparse Method = "sparse"
)

// Into copies src (size bytes) into dst, an empty file open for writing.
func Into(ctx context.Context, src, dst *os.File, size int64) (Method, error) {
	err := unix.IoctlFileClone(int(dst.Fd()), int(src.Fd()))
	if err == nil {
		return Reflink, nil
	}
	// Not supported here (ext4, tmpfs, across filesystems): copy sparsely.
	if !unsupported(err) && !errors.Is(err, unix.ENOTTY) {
		return "", fmt.Errorf("FICLONE: %w", err)
	}
	if err := sparseCopy(ctx, src, dst, size); err != nil {
		return "", err
	}
	return Sparse, nil
}

// Atomic copies the file src to dst with mode perm through atomicfile, so
// dst appears only complete (replacing an older dst).
func Atomic(ctx context.Context, src, dst string, perm os.FileMode) (Method, error) {
	in, err := os.Open(src)
	if err != nil {
		return "", fmt.Errorf("copy %s: %w", src, err)
	}
	defer in.Close()
	fi, err := in.Stat()
	if err != nil {
		return "", fmt.Errorf("copy %s: %w", src, err)
	}
	out, err := atomicfile.New(dst, perm)
	if err != nil {
		return "", fmt.Errorf("copy %s: %w", src, err)
	}
	defer out.Abort()
	method, err := Into(ctx, in, out.Temp(), fi.Size())
	if err != nil {
		return "", fmt.Errorf("copy %s to %s: %w", src, dst, err)
	}
	if err := out.Commit(); err != nil {
		return "", fmt.Errorf("copy %s: %w", src, err)
	}
	return method, nil
}

func unsupported(err error) bool {
	return errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.EXDEV) || errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOSYS)
}

// sparseCopy copies only the data extents of src and sizes dst like src.
// Without SEEK_DATA support the rest of the file is copied whole.
func sparseCopy(ctx context.Context, src, dst *os.File, size int64) error {
	if err := dst.Truncate(size); err != nil {
		return fmt.Errorf("size copy: %w", err)
	}
	sfd := int(src.Fd())
	var off int64
	for off < size {
		if err := ctx.Err(); err != nil {
			return err
		}
		data, err := unix.Seek(sfd, off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			return nil // only a hole is left
		}
		if err != nil {
			if !unsupported(err) {
				return fmt.Errorf("SEEK_DATA: %w", err)
			}
			data = off
		}
		hole, err := unix.Seek(sfd, data, unix.SEEK_HOLE)
		if err != nil {
			if !unsupported(err) {
				return fmt.Errorf("SEEK_HOLE: %w", err)
			}
			hole = size
		}
		if err := copyRange(src, dst, data, hole-data); err != nil {
			return err
		}
		off = hole
	}
	return nil
}

// copyRange copies n bytes at off, in the kernel when it can.
func copyRange(src, dst *os.File, off, n int64) error {
	for n > 0 {
		soff, doff := off, off
		w, err := unix.CopyFileRange(int(src.Fd()), &soff, int(dst.Fd()), &doff, int(min(n, 1<<30)), 0)
		if err != nil {
			if unsupported(err) {
				return copyRangeRW(src, dst, off, n)
			}
			return fmt.Errorf("copy_file_range: %w", err)
		}
		if w == 0 {
			return fmt.Errorf("copy_file_range: short copy at %d", off)
		}
		off += int64(w)
		n -= int64(w)
	}
	return nil
}

func copyRangeRW(src, dst *os.File, off, n int64) error {
	if _, err := io.Copy(io.NewOffsetWriter(dst, off), io.NewSectionReader(src, off, n)); err != nil {
		return fmt.Errorf("copy: %w", err)
	}
	return nil
}
