// Package paths maps the paths clients send to paths on this machine.
package paths

import (
	"errors"
	"fmt"
	"path/filepath"
	"strings"
)

// ErrInvalid is wrapped by every rejection of a client path.
var ErrInvalid = errors.New("invalid path")

// Resolver maps client paths to host paths. With an empty Root, client paths
// are host paths. With a Root (host mode for development and tests), every
// client path is placed inside Root lexically; symlinks inside Root can still
// point outside it, so this is a convenience, not a security boundary.
type Resolver struct {
	Root string
}

// Resolve turns a client path into a host path. Relative paths and "~"
// are taken from home (a client path too).
func (r Resolver) Resolve(p, home string) (string, error) {
	if strings.IndexByte(p, 0) >= 0 || strings.IndexByte(home, 0) >= 0 || strings.IndexByte(r.Root, 0) >= 0 {
		return "", fmt.Errorf("%w: contains a NUL byte", ErrInvalid)
	}
	if p == "" {
		return "", fmt.Errorf("%w: empty", ErrInvalid)
	}
	if home == "" || !filepath.IsAbs(home) {
		home = "/"
	}
	switch {
	case p == "~":
		p = home
	case strings.HasPrefix(p, "~/"):
		p = filepath.Join(home, p[2:])
	case !filepath.IsAbs(p):
		p = filepath.Join(home, p)
	}
	p = filepath.Clean(p)
	if r.Root == "" {
		return p, nil
	}
	// Clean of an absolute path has no ".." left, so the join stays in Root.
	return filepath.Join(r.Root, p), nil
}

// Client turns a host path back into the path a client sees.
func (r Resolver) Client(host string) string {
	if r.Root == "" {
		return host
	}
	rel, err := filepath.Rel(r.Root, host)
	if err != nil || rel == ".." || strings.HasPrefix(rel, "../") {
		return host
	}
	return filepath.Join("/", rel)
}
