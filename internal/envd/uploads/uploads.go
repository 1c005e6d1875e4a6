// Package uploads stages envd's file uploads where directory watchers do
// not look, and tells the watchers when an upload lands.
//
// An upload replaces its file atomically (a failed one leaves the old
// content), so it is written to a temporary file and renamed over the
// target. With the temporary file beside the target, a watcher would
// report its made-up name, and the landing only as a create (a rename).
// So the temporary file lives in a hidden staging directory at the root
// of the target's mount (a rename needs the same mount), which watchers
// skip, and the landing is shown to them as a WRITE on the file's own
// name, as an in-place write would show.
package uploads

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"

	"github.com/wrenn-dev/wrenn/internal/atomicfile"
)

// StagingName is the staging directory's name at the root of a mount.
const StagingName = ".wrenn-uploads"

// mountInfo is read to find the mount a path is on.
const mountInfo = "/proc/self/mountinfo"

// Area is the set of staging directories of one envd. Safe for
// concurrent use.
type Area struct {
	log  *slog.Logger
	mu   sync.Mutex
	dirs map[string]bool // staging directories in use (host paths)
}

// New returns an empty Area.
func New(log *slog.Logger) *Area {
	return &Area{log: log, dirs: map[string]bool{}}
}

// Create starts the replacement of target (a host path whose directory
// exists) with mode perm. When no staging directory can be had (a
// read-only mount root, envd not root in host mode), the temporary file
// goes beside the target, as atomicfile.New does.
func (a *Area) Create(target string, perm fs.FileMode) (*atomicfile.File, error) {
	staging, err := a.stagingFor(filepath.Dir(target))
	if err != nil {
		a.log.Warn("no upload staging directory: the temporary file goes beside the target", "target", target, "err", err)
		return atomicfile.New(target, perm)
	}
	return atomicfile.NewIn(staging, target, perm)
}

// IsStaging reports whether p (a host path) is a staging directory or
// inside one: watchers never report or follow such paths.
func (a *Area) IsStaging(p string) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	for d := filepath.Clean(p); ; d = filepath.Dir(d) {
		if a.dirs[d] {
			return true
		}
		if d == filepath.Dir(d) {
			return false
		}
	}
}

// stagingFor returns (making it when needed) the staging directory of the
// mount dir is on.
func (a *Area) stagingFor(dir string) (string, error) {
	real, err := filepath.EvalSymlinks(dir)
	if err != nil {
		return "", err
	}
	mp, err := mountPoint(real)
	if err != nil {
		return "", err
	}
	staging := filepath.Join(mp, StagingName)
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.dirs[staging] {
		return staging, nil
	}
	if err := os.Mkdir(staging, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
		return "", fmt.Errorf("create %s: %w", staging, err)
	}
	st, err := os.Lstat(staging)
	if err != nil {
		return "", err
	}
	if !st.IsDir() {
		return "", fmt.Errorf("%s is not a directory", staging)
	}
	a.dirs[staging] = true
	return staging, nil
}

// mountPoint returns the mount point under which the real path p lies:
// the longest mount point of /proc/self/mountinfo that contains it.
func mountPoint(p string) (string, error) {
	f, err := os.Open(mountInfo)
	if err != nil {
		return "", fmt.Errorf("find the mount of %s: %w", p, err)
	}
	defer f.Close()
	best := ""
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		// Fields: id parent major:minor root mount-point options ...
		fields := strings.Fields(sc.Text())
		if len(fields) < 5 {
			continue
		}
		mp := unescape(fields[4])
		if within(p, mp) && len(mp) > len(best) {
			best = mp
		}
	}
	if err := sc.Err(); err != nil {
		return "", fmt.Errorf("read %s: %w", mountInfo, err)
	}
	if best == "" {
		return "", fmt.Errorf("no mount holds %s", p)
	}
	return best, nil
}

// within reports whether p is dir or below it.
func within(p, dir string) bool {
	if dir == "/" {
		return strings.HasPrefix(p, "/")
	}
	return p == dir || strings.HasPrefix(p, dir+"/")
}

// unescape undoes mountinfo's octal escapes (\040 for a space...).
func unescape(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			var v byte
			ok := true
			for _, c := range s[i+1 : i+4] {
				if c < '0' || c > '7' {
					ok = false
					break
				}
				v = v*8 + byte(c-'0')
			}
			if ok {
				b.WriteByte(v)
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// Landed makes the landing of target (just renamed into place) show as
// a WRITE on its name to every inotify watcher, envd's or a guest
// program's, after the rename's own event: truncating the file to its own
// size changes no byte but is a modification for inotify (IN_MODIFY).
// It is best effort: a file replaced meanwhile is left as it is.
func (a *Area) Landed(target string) {
	f, err := os.OpenFile(target, os.O_WRONLY|syscall.O_NOFOLLOW|syscall.O_NONBLOCK, 0)
	if err != nil {
		return
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil || !st.Mode().IsRegular() {
		return
	}
	if err := f.Truncate(st.Size()); err != nil {
		a.log.Warn("announce an upload to watchers", "path", target, "err", err)
	}
}
