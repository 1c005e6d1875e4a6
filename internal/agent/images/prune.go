package images

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// keepSupersededRootfs is how many replaced root filesystems of a template
// are kept besides the current one, referenced or not.
const keepSupersededRootfs = 2

// headerBytes is how much of each file is searched for a base image's name:
// qcow2 keeps its backing file name in the first cluster, state files are
// small.
const headerBytes = 64 << 10

// PruneRootfs removes a template's superseded root filesystems (every
// rootfs-*.ext4 but current) that no disk, snapshot or state file under the
// WRENN_DIR names, keeping the newest keepSupersededRootfs of them anyway.
// Each envd change makes a new root filesystem (tens of MB), so without this
// they pile up. It returns the removed paths.
func (p Paths) PruneRootfs(name, current string) ([]string, error) {
	matches, err := filepath.Glob(filepath.Join(p.TemplateDir(name), "rootfs-*.ext4"))
	if err != nil {
		return nil, err
	}
	type cand struct {
		path string
		mod  int64
	}
	var old []cand
	for _, m := range matches {
		if m == current {
			continue
		}
		st, err := os.Stat(m)
		if err != nil {
			continue
		}
		old = append(old, cand{m, st.ModTime().UnixNano()})
	}
	if len(old) <= keepSupersededRootfs {
		return nil, nil
	}
	sort.Slice(old, func(i, j int) bool { return old[i].mod > old[j].mod })
	old = old[keepSupersededRootfs:]
	names := make([]string, len(old))
	for i, c := range old {
		names[i] = filepath.Base(c.path)
	}
	used, err := p.referenced(names)
	if err != nil {
		return nil, err
	}
	var removed []string
	for _, c := range old {
		if used[filepath.Base(c.path)] {
			continue
		}
		if err := os.Remove(c.path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return removed, fmt.Errorf("remove %s: %w", c.path, err)
		}
		removed = append(removed, c.path)
	}
	return removed, nil
}

// referenced reports which of the file names appear in the first bytes of
// any file of the sandboxes, snapshots and templates under the WRENN_DIR
// (other than the root filesystems themselves).
func (p Paths) referenced(names []string) (map[string]bool, error) {
	used := map[string]bool{}
	buf := make([]byte, headerBytes)
	for _, root := range []string{filepath.Join(p.Dir, "sandboxes"), filepath.Join(p.Dir, "snapshots"), filepath.Join(p.Dir, "templates")} {
		err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
			if err != nil {
				if errors.Is(err, fs.ErrNotExist) {
					return nil
				}
				return err
			}
			if !d.Type().IsRegular() || strings.HasPrefix(d.Name(), "rootfs-") && strings.HasSuffix(d.Name(), ".ext4") {
				return nil
			}
			f, err := os.Open(path)
			if err != nil {
				return nil // gone meanwhile
			}
			n, _ := io.ReadFull(f, buf)
			f.Close()
			for _, name := range names {
				if bytes.Contains(buf[:n], []byte(name)) {
					used[name] = true
				}
			}
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("look for users of old root filesystems: %w", err)
		}
	}
	return used, nil
}
