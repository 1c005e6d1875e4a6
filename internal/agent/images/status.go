package images

import (
	"errors"
	"fmt"
	"os"
	"strings"
)

// ArtifactStatus is the state of one built file.
type ArtifactStatus struct {
	// Path is the stable name (a symlink), RealPath the file behind it.
	Path     string
	RealPath string
	Present  bool
	// Key is the cache key of the installed file, when known.
	Key string
}

// StatusReport says which images are installed under a WRENN_DIR.
type StatusReport struct {
	Dir     string
	Kernel  ArtifactStatus
	Minimal ArtifactStatus
	// Base is the optional Debian template (`--base=false` skips it): it
	// is reported, never counted as missing.
	Base ArtifactStatus
	// Metadata of the minimal template, when present.
	Metadata *Metadata
	// Missing lists, for people, what is absent.
	Missing []string
}

// Ready reports whether the agent can boot sandboxes from these images.
func (s StatusReport) Ready() bool { return len(s.Missing) == 0 }

// Err is nil when Ready, else an ErrMissing error that says how to fix it.
func (s StatusReport) Err() error {
	if s.Ready() {
		return nil
	}
	return fmt.Errorf("%w under %s: %s; run `wrenn images build` (or `make images`)",
		ErrMissing, s.Dir, strings.Join(s.Missing, ", "))
}

// Status inspects wrennDir (DefaultDir when empty) without building anything.
func Status(wrennDir string) (StatusReport, error) {
	p := NewPaths(wrennDir)
	st := StatusReport{Dir: p.Dir}
	var err error
	st.Kernel, err = artifact(p.Kernel(), "vmlinux-")
	if err != nil {
		return st, err
	}
	if !st.Kernel.Present {
		st.Missing = append(st.Missing, "kernel ("+p.Kernel()+")")
	}
	st.Minimal, err = artifact(p.Rootfs(MinimalTemplate), "rootfs-")
	if err != nil {
		return st, err
	}
	st.Minimal.Key = strings.TrimSuffix(st.Minimal.Key, ".ext4")
	if !st.Minimal.Present {
		st.Missing = append(st.Missing, "minimal template ("+p.Rootfs(MinimalTemplate)+")")
	}
	st.Base, err = artifact(p.Rootfs(BaseTemplate), "rootfs-")
	if err != nil {
		return st, err
	}
	st.Base.Key = strings.TrimSuffix(st.Base.Key, ".ext4")
	if m, err := ReadMetadata(p.Metadata(MinimalTemplate)); err == nil {
		st.Metadata = &m
	} else if st.Minimal.Present {
		st.Missing = append(st.Missing, "minimal template metadata ("+p.Metadata(MinimalTemplate)+")")
	}
	return st, nil
}

func artifact(path, prefix string) (ArtifactStatus, error) {
	a := ArtifactStatus{Path: path}
	real, err := resolve(path, path)
	if err != nil {
		if errors.Is(err, ErrMissing) {
			return a, nil
		}
		return a, err
	}
	fi, err := os.Stat(real)
	if err != nil {
		return a, fmt.Errorf("stat %s: %w", real, err)
	}
	a.RealPath = real
	a.Present = fi.Mode().IsRegular() && fi.Size() > 0
	base := real[strings.LastIndex(real, "/")+1:]
	if strings.HasPrefix(base, prefix) {
		a.Key = strings.TrimPrefix(base, prefix)
	}
	return a, nil
}
