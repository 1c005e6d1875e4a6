// Package images builds and locates the guest images the host agent boots:
// a microVM kernel compiled from Debian's linux-source and the "minimal"
// root filesystem (busybox-static, envd as init, CA certificates). Everything
// lives under WRENN_DIR (default /var/lib/wrenn):
//
//	kernels/vmlinux-<key>          one kernel per configuration/source key
//	kernels/vmlinux                symlink to the current kernel
//	templates/minimal/rootfs-<key>.ext4
//	templates/minimal/rootfs.ext4  symlink to the current root filesystem
//	templates/minimal/metadata.json
//	cache/kernel/src-<version>/    extracted, configured kernel tree (reruns are no-ops)
//
// Files are content-addressed and never rewritten in place, so qcow2 overlays
// of running sandboxes keep a valid backing file when the image is rebuilt.
package images

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// DefaultDir is WRENN_DIR's default.
const DefaultDir = "/var/lib/wrenn"

// MinimalTemplate is the name of the template Build makes.
const MinimalTemplate = "minimal"

// DirFromEnv returns $WRENN_DIR, or DefaultDir when unset.
func DirFromEnv() string {
	if d := os.Getenv("WRENN_DIR"); d != "" {
		return d
	}
	return DefaultDir
}

// Paths names the files under one WRENN_DIR.
type Paths struct {
	Dir string
}

// NewPaths returns the layout under wrennDir (DefaultDir when empty).
func NewPaths(wrennDir string) Paths {
	if wrennDir == "" {
		wrennDir = DefaultDir
	}
	return Paths{Dir: wrennDir}
}

// KernelsDir holds the built kernels.
func (p Paths) KernelsDir() string { return filepath.Join(p.Dir, "kernels") }

// Kernel is the current kernel (a symlink to the content-addressed file).
func (p Paths) Kernel() string { return filepath.Join(p.KernelsDir(), "vmlinux") }

// KernelFile is the kernel built for key.
func (p Paths) KernelFile(key string) string {
	return filepath.Join(p.KernelsDir(), "vmlinux-"+key)
}

// TemplateDir holds one template's files.
func (p Paths) TemplateDir(name string) string {
	return filepath.Join(p.Dir, "templates", name)
}

// Rootfs is the template's current root filesystem (a symlink).
func (p Paths) Rootfs(name string) string {
	return filepath.Join(p.TemplateDir(name), "rootfs.ext4")
}

// RootfsFile is the template's root filesystem built for key.
func (p Paths) RootfsFile(name, key string) string {
	return filepath.Join(p.TemplateDir(name), "rootfs-"+key+".ext4")
}

// Metadata is the template's metadata.json.
func (p Paths) Metadata(name string) string {
	return filepath.Join(p.TemplateDir(name), "metadata.json")
}

// CacheDir holds build trees and other intermediate files.
func (p Paths) CacheDir() string { return filepath.Join(p.Dir, "cache") }

// ResolvedKernel returns the real file behind Kernel(). Use it (not the
// symlink) in anything that must survive a rebuild, e.g. a sandbox's state.
func (p Paths) ResolvedKernel() (string, error) {
	return resolve(p.Kernel(), "kernel")
}

// ResolvedRootfs returns the real file behind Rootfs(name). qcow2 overlays
// must use it as their backing file so a rebuild never changes their base.
func (p Paths) ResolvedRootfs(name string) (string, error) {
	return resolve(p.Rootfs(name), "template "+name+" root filesystem")
}

// ErrMissing reports images that are not built yet.
var ErrMissing = errors.New("images missing")

func resolve(path, what string) (string, error) {
	real, err := filepath.EvalSymlinks(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return "", fmt.Errorf("%w: %s not found at %s; run `wrenn images build`", ErrMissing, what, path)
		}
		return "", fmt.Errorf("resolve %s: %w", what, err)
	}
	return real, nil
}
