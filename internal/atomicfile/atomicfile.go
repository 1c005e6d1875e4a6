// Package atomicfile replaces files so that a reader, or the next process
// after a crash or power loss, sees either the old content or the new one,
// never a mix: the content goes to a temporary file in the same directory,
// which is synced, closed and renamed over the target, and then the
// directory is synced so the rename itself is on disk.
//
// It is the one place in the tree that does this; every writer that
// publishes a file by renaming goes through it. envd, a static guest
// binary, uses it too, so it depends on the standard library only.
package atomicfile

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
)

// WriteFile replaces path with data and mode perm.
func WriteFile(path string, data []byte, perm fs.FileMode) error {
	f, err := New(path, perm)
	if err != nil {
		return err
	}
	defer f.Abort()
	if _, err := f.Write(data); err != nil {
		return err
	}
	return f.Commit()
}

// File is a replacement for a path, being written. Write to it (or let a
// tool write to TempName), then Commit to put it in place or Abort to drop
// it. Abort after Commit does nothing, so `defer f.Abort()` right after New
// covers every early return.
type File struct {
	path string
	perm fs.FileMode
	tmp  *os.File
	done bool
}

// New starts a replacement of path that Commit gives mode perm (exactly:
// the umask does not apply). Until then the temporary file has mode 0600
// and a hidden name beside path.
func New(path string, perm fs.FileMode) (*File, error) {
	return NewIn(filepath.Dir(path), path, perm)
}

// NewIn is New with the temporary file in tempDir instead of beside path,
// for a writer whose temporary name must not show in path's directory
// (envd's uploads, which directory watchers report). tempDir must be on
// path's filesystem (and mount), or Commit fails.
func NewIn(tempDir, path string, perm fs.FileMode) (*File, error) {
	tmp, err := os.CreateTemp(tempDir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return nil, fmt.Errorf("replace %s: %w", path, err)
	}
	return &File{path: path, perm: perm, tmp: tmp}, nil
}

// Write appends to the new content.
func (f *File) Write(p []byte) (int, error) {
	if f.done {
		return 0, fmt.Errorf("replace %s: %w", f.path, os.ErrClosed)
	}
	n, err := f.tmp.Write(p)
	if err != nil {
		return n, fmt.Errorf("replace %s: %w", f.path, err)
	}
	return n, nil
}

// Temp is the open temporary file, for what Write does not cover
// (Truncate, Chown, an ioctl). Do not close or rename it.
func (f *File) Temp() *os.File { return f.tmp }

// TempName is the temporary file's path, for a tool that writes the file
// by name. The tool must write it in place, not replace it.
func (f *File) TempName() string { return f.tmp.Name() }

// Commit syncs the new content and renames it over the target. On any
// failure the temporary file is removed and the target is as it was
// (except when only the final directory sync fails: the new content is in
// place then, but may not survive a power loss).
func (f *File) Commit() error {
	if f.done {
		return fmt.Errorf("replace %s: %w", f.path, os.ErrClosed)
	}
	f.done = true
	name := f.tmp.Name()
	err := f.tmp.Chmod(f.perm)
	if err == nil {
		err = f.tmp.Sync()
	}
	if cerr := f.tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(name, f.path)
	}
	if err != nil {
		os.Remove(name)
		return fmt.Errorf("replace %s: %w", f.path, err)
	}
	if err := SyncDir(filepath.Dir(f.path)); err != nil {
		return fmt.Errorf("replace %s: %w", f.path, err)
	}
	return nil
}

// Abort drops the new content and leaves the target untouched. It does
// nothing after Commit or a first Abort.
func (f *File) Abort() {
	if f.done {
		return
	}
	f.done = true
	f.tmp.Close()
	os.Remove(f.tmp.Name())
}

// Symlink makes link a symbolic link to target, replacing whatever link
// was, atomically.
func Symlink(target, link string) error {
	var rnd [8]byte
	if _, err := rand.Read(rnd[:]); err != nil {
		return fmt.Errorf("symlink %s: %w", link, err)
	}
	tmp := filepath.Join(filepath.Dir(link), "."+filepath.Base(link)+".tmp-"+hex.EncodeToString(rnd[:]))
	if err := os.Symlink(target, tmp); err != nil {
		return fmt.Errorf("symlink %s: %w", link, err)
	}
	if err := os.Rename(tmp, link); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("symlink %s: %w", link, err)
	}
	if err := SyncDir(filepath.Dir(link)); err != nil {
		return fmt.Errorf("symlink %s: %w", link, err)
	}
	return nil
}

// SyncDir makes the entries of dir (files created, renamed or removed in
// it) durable. Filesystems that cannot sync a directory (EINVAL) are taken
// to need no sync.
func SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("sync directory: %w", err)
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	if err != nil && !errors.Is(err, syscall.EINVAL) {
		return fmt.Errorf("sync directory %s: %w", dir, err)
	}
	return nil
}
