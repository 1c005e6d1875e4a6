// Package filemeta keeps the metadata E2B's SDKs attach to files (the
// X-Metadata-<key> headers of an upload) as user.<key> extended attributes,
// so it lives with the file: a rename keeps it, a removal drops it, and
// nothing else in envd has to store it.
package filemeta

import (
	"errors"
	"fmt"
	"net/http"
	"os"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// HeaderPrefix starts each metadata header of an upload.
const HeaderPrefix = "X-Metadata-"

const xattrPrefix = "user."

// Limits: an xattr name is at most 255 bytes, and ext4 keeps all of a
// file's attributes in one block, so the whole set must stay small.
const (
	MaxKeyBytes   = 255 - len(xattrPrefix)
	MaxTotalBytes = 3 << 10
)

// maxAttrBytes bounds the buffers read into (Linux caps a value at 64 KiB).
const maxAttrBytes = 256 << 10

// ErrInvalid is wrapped by every rejection of client metadata.
var ErrInvalid = errors.New("invalid file metadata")

// FromHeader returns the metadata of an upload's headers (nil when none).
// Keys are lower-cased: HTTP header names are case-insensitive, so the
// case a client used does not survive the trip.
func FromHeader(h http.Header) (map[string]string, error) {
	var md map[string]string
	total := 0
	for name, vals := range h {
		if len(name) <= len(HeaderPrefix) || !strings.EqualFold(name[:len(HeaderPrefix)], HeaderPrefix) {
			continue
		}
		key := strings.ToLower(name[len(HeaderPrefix):])
		if len(key) > MaxKeyBytes {
			return nil, fmt.Errorf("%w: key %q is longer than %d bytes", ErrInvalid, key, MaxKeyBytes)
		}
		if len(vals) != 1 {
			return nil, fmt.Errorf("%w: key %q is given %d times", ErrInvalid, key, len(vals))
		}
		v := vals[0]
		for i := 0; i < len(v); i++ {
			if v[i] < 0x20 || v[i] > 0x7e {
				return nil, fmt.Errorf("%w: the value of %q is not printable ASCII", ErrInvalid, key)
			}
		}
		total += len(key) + len(v)
		if total > MaxTotalBytes {
			return nil, fmt.Errorf("%w: more than %d bytes in all", ErrInvalid, MaxTotalBytes)
		}
		if md == nil {
			md = map[string]string{}
		}
		md[key] = v
	}
	return md, nil
}

// Read returns the metadata of path (not following a final symlink); nil
// when it has none or its filesystem keeps no extended attributes.
func Read(path string) (map[string]string, error) {
	names, err := listNames(path)
	if err != nil || len(names) == 0 {
		return nil, err
	}
	md := make(map[string]string, len(names))
	for _, n := range names {
		v, err := get(path, n)
		if errors.Is(err, unix.ENODATA) {
			continue // removed meanwhile
		}
		if err != nil {
			return nil, err
		}
		md[strings.TrimPrefix(n, xattrPrefix)] = v
	}
	if len(md) == 0 {
		return nil, nil
	}
	return md, nil
}

// Carry gives f the metadata of the file at from, merged with md (md wins):
// a replaced file keeps what it had, as a file written in place would.
// A missing from is no error.
func Carry(f *os.File, from string, md map[string]string) error {
	old, err := Read(from)
	if err != nil && !errors.Is(err, os.ErrNotExist) && !errors.Is(err, syscall.ENOTDIR) {
		return err
	}
	for k, v := range old {
		if _, ok := md[k]; !ok {
			if err := set(f, k, v); err != nil {
				return err
			}
		}
	}
	for k, v := range md {
		if err := set(f, k, v); err != nil {
			return err
		}
	}
	return nil
}

func set(f *os.File, key, value string) error {
	err := unix.Fsetxattr(int(f.Fd()), xattrPrefix+key, []byte(value), 0)
	switch {
	case err == nil:
		return nil
	case errors.Is(err, unix.ENOTSUP):
		return fmt.Errorf("%w: this filesystem keeps no metadata (user extended attributes)", ErrInvalid)
	case errors.Is(err, unix.ENOSPC), errors.Is(err, unix.E2BIG), errors.Is(err, unix.ERANGE):
		return fmt.Errorf("%w: too much metadata for one file", ErrInvalid)
	default:
		return fmt.Errorf("set metadata %q: %w", key, err)
	}
}

// listNames returns path's user.* attribute names.
func listNames(path string) ([]string, error) {
	buf := make([]byte, 1024)
	for {
		n, err := unix.Llistxattr(path, buf)
		if errors.Is(err, unix.ERANGE) && len(buf) < maxAttrBytes {
			buf = make([]byte, len(buf)*4)
			continue
		}
		if errors.Is(err, unix.ENOTSUP) {
			return nil, nil
		}
		if err != nil {
			return nil, &os.PathError{Op: "listxattr", Path: path, Err: err}
		}
		var names []string
		for _, n := range strings.Split(string(buf[:n]), "\x00") {
			if strings.HasPrefix(n, xattrPrefix) {
				names = append(names, n)
			}
		}
		return names, nil
	}
}

func get(path, name string) (string, error) {
	buf := make([]byte, 256)
	for {
		n, err := unix.Lgetxattr(path, name, buf)
		if errors.Is(err, unix.ERANGE) && len(buf) < maxAttrBytes {
			buf = make([]byte, len(buf)*4)
			continue
		}
		if err != nil {
			return "", &os.PathError{Op: "getxattr", Path: path, Err: err}
		}
		return string(buf[:n]), nil
	}
}
