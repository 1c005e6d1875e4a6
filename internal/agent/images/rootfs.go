package images

import (
	"bufio"
	"bytes"
	"context"
	"debug/elf"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/wrenn-dev/wrenn/internal/atomicfile"
	"github.com/wrenn-dev/wrenn/internal/names"
)

// Metadata describes one built template; it is written next to the rootfs.
type Metadata struct {
	Template   string `json:"template"`
	RootfsKey  string `json:"rootfs_key"`
	RootfsFile string `json:"rootfs_file"`
	Format     string `json:"format"`
	SizeBytes  int64  `json:"size_bytes"`
	KernelKey  string `json:"kernel_key,omitempty"`
	EnvdSHA256 string `json:"envd_sha256"`
	// DefaultUser is the user the image is made for (base: "user"); empty
	// means root.
	DefaultUser string    `json:"default_user,omitempty"`
	BuiltAt     time.Time `json:"built_at"`
}

// ReadMetadata reads a template's metadata.json.
func ReadMetadata(path string) (Metadata, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return Metadata{}, fmt.Errorf("read template metadata: %w", err)
	}
	return ParseMetadata(data)
}

// ParseMetadata decodes and validates metadata.json contents.
func ParseMetadata(data []byte) (Metadata, error) {
	var m Metadata
	dec := json.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&m); err != nil {
		return Metadata{}, fmt.Errorf("parse template metadata: %w", err)
	}
	if !names.ValidTemplate(m.Template) {
		return Metadata{}, fmt.Errorf("template metadata: invalid template name %q", m.Template)
	}
	if m.RootfsKey == "" || m.RootfsFile == "" || filepath.Base(m.RootfsFile) != m.RootfsFile || strings.HasPrefix(m.RootfsFile, ".") {
		return Metadata{}, fmt.Errorf("template metadata: invalid rootfs file %q", m.RootfsFile)
	}
	if m.SizeBytes < 0 {
		return Metadata{}, fmt.Errorf("template metadata: negative size %d", m.SizeBytes)
	}
	return m, nil
}

func (b *Builder) rootfsKey(envdSum string) (string, error) {
	parts := [][]byte{[]byte(rootfsRecipeVersion), []byte(envdSum), []byte(strconv.Itoa(b.cfg.RootfsSizeMiB))}
	for _, p := range []string{b.cfg.BusyboxPath, b.cfg.BashPath, b.cfg.CACertsPath} {
		sum, err := hashFile(p)
		if err != nil {
			return "", fmt.Errorf("hash %s: %w", p, err)
		}
		parts = append(parts, []byte(sum))
	}
	return contentKey(parts...), nil
}

func (b *Builder) buildRootfs(ctx context.Context, kernelKey string) (key, path string, built bool, err error) {
	name := MinimalTemplate
	envdSum, err := b.checkEnvd()
	if err != nil {
		return "", "", false, err
	}
	for _, p := range []struct{ path, pkg string }{{b.cfg.BusyboxPath, "busybox-static"}, {b.cfg.CACertsPath, "ca-certificates"}} {
		if !fileExists(p.path) {
			return "", "", false, fmt.Errorf("%s not found: install Debian's %s package", p.path, p.pkg)
		}
	}
	if err := checkStatic(b.cfg.BusyboxPath); err != nil {
		return "", "", false, fmt.Errorf("%w (install busybox-static, not busybox)", err)
	}
	key, err = b.rootfsKey(envdSum)
	if err != nil {
		return "", "", false, err
	}
	path, built, err = b.installRootfs(ctx, rootfsSpec{
		name: name, key: key, sizeMiB: b.cfg.RootfsSizeMiB, kernelKey: kernelKey, envdSum: envdSum,
		populate: b.populate,
	})
	return key, path, built, err
}

// rootfsSpec is one template's root filesystem: what goes in it and what
// its metadata says.
type rootfsSpec struct {
	name      string
	key       string
	sizeMiB   int
	kernelKey string
	envdSum   string
	// defaultUser is the user envd runs calls as when a sandbox names none.
	defaultUser string
	populate    func(ctx context.Context, dir string) error
}

// installRootfs makes the ext4 image of spec (unless one with its key is
// installed), points the template's rootfs.ext4 at it, writes its
// metadata and prunes superseded images.
func (b *Builder) installRootfs(ctx context.Context, spec rootfsSpec) (path string, built bool, err error) {
	log := b.cfg.Logger
	name, key := spec.name, spec.key
	path = b.paths.RootfsFile(name, key)
	if m, err := ReadMetadata(b.paths.Metadata(name)); err == nil && m.RootfsKey == key && fileExists(path) {
		log.Info("rootfs up to date", "template", name, "key", key, "path", path)
		return path, false, atomicfile.Symlink(filepath.Base(path), b.paths.Rootfs(name))
	}

	start := time.Now()
	log.Info("rootfs: building", "template", name, "key", key, "envd_sha256", spec.envdSum[:16])
	if os.Geteuid() != 0 {
		log.Warn("rootfs: not running as root; files in the image will be owned by the current user")
	}
	if err := os.MkdirAll(b.paths.TemplateDir(name), 0o755); err != nil {
		return "", false, fmt.Errorf("create template dir: %w", err)
	}
	if err := os.MkdirAll(b.paths.CacheDir(), 0o755); err != nil {
		return "", false, fmt.Errorf("create cache dir: %w", err)
	}
	staging, err := os.MkdirTemp(b.paths.CacheDir(), "rootfs-"+name+"-")
	if err != nil {
		return "", false, fmt.Errorf("create staging dir: %w", err)
	}
	defer os.RemoveAll(staging)
	if err := spec.populate(ctx, staging); err != nil {
		return "", false, err
	}
	img, err := atomicfile.New(path, 0o644)
	if err != nil {
		return "", false, fmt.Errorf("create image: %w", err)
	}
	defer img.Abort()
	size := int64(spec.sizeMiB) << 20
	if err := img.Temp().Truncate(size); err != nil {
		return "", false, fmt.Errorf("size image: %w", err)
	}
	log.Info("rootfs: mkfs.ext4", "template", name, "size_mib", spec.sizeMiB)
	// -d copies the staging tree in, so no loop mount (and no root for mount) is needed.
	if err := b.run(ctx, staging, io.Discard, "mkfs.ext4", "-q", "-F", "-L", "wrenn-root", "-m", "0",
		"-E", "root_owner=0:0", "-d", staging, img.TempName()); err != nil {
		return "", false, fmt.Errorf("mkfs.ext4 (e2fsprogs): %w", err)
	}
	if err := img.Commit(); err != nil {
		return "", false, fmt.Errorf("install image: %w", err)
	}
	if err := atomicfile.Symlink(filepath.Base(path), b.paths.Rootfs(name)); err != nil {
		return "", false, err
	}
	meta := Metadata{
		Template: name, RootfsKey: key, RootfsFile: filepath.Base(path), Format: "ext4",
		SizeBytes: size, KernelKey: spec.kernelKey, EnvdSHA256: spec.envdSum, DefaultUser: spec.defaultUser,
		BuiltAt: time.Now().UTC(),
	}
	data, _ := json.MarshalIndent(meta, "", "  ")
	if err := atomicfile.WriteFile(b.paths.Metadata(name), append(data, '\n'), 0o644); err != nil {
		return "", false, fmt.Errorf("write metadata: %w", err)
	}
	log.Info("rootfs built", "template", name, "path", path, "took", time.Since(start).Round(time.Millisecond))
	removed, err := b.paths.PruneRootfs(name, path)
	if err != nil {
		// The new image is in place; an old one left behind only costs disk.
		log.Warn("rootfs: prune superseded images", "err", err)
	}
	for _, r := range removed {
		log.Info("rootfs: removed superseded image", "path", r)
	}
	return path, true, nil
}

// checkEnvd checks the envd binary the images get and returns its SHA-256.
func (b *Builder) checkEnvd() (string, error) {
	if b.cfg.EnvdPath == "" {
		return "", errors.New("no envd binary given: build one with `CGO_ENABLED=0 go build -o envd ./cmd/envd` (or images.BuildEnvd) and pass its path")
	}
	if err := checkStatic(b.cfg.EnvdPath); err != nil {
		return "", err
	}
	sum, err := hashFile(b.cfg.EnvdPath)
	if err != nil {
		return "", fmt.Errorf("hash envd: %w", err)
	}
	return sum, nil
}

// populate lays out the minimal root filesystem in dir.
func (b *Builder) populate(ctx context.Context, dir string) error {
	dirs := []struct {
		path string
		mode os.FileMode
	}{
		{"bin", 0o755}, {"sbin", 0o755}, {"usr/bin", 0o755}, {"usr/sbin", 0o755},
		{"etc/ssl/certs", 0o755}, {"dev", 0o755}, {"proc", 0o555}, {"sys", 0o555},
		{"run", 0o755}, {"tmp", os.ModeSticky | 0o777}, {"var/tmp", os.ModeSticky | 0o777}, {"mnt", 0o755},
		{"root", 0o700}, {"home/user", 0o755},
	}
	for _, d := range dirs {
		p := filepath.Join(dir, d.path)
		if err := os.MkdirAll(p, 0o755); err != nil {
			return fmt.Errorf("create /%s: %w", d.path, err)
		}
		// Chmod after MkdirAll: the umask would drop the sticky bit.
		if err := os.Chmod(p, d.mode); err != nil {
			return fmt.Errorf("chmod /%s: %w", d.path, err)
		}
	}
	if os.Geteuid() == 0 {
		if err := os.Chown(filepath.Join(dir, "home/user"), 1000, 1000); err != nil {
			return fmt.Errorf("chown /home/user: %w", err)
		}
	}
	if err := copyFile(b.cfg.BusyboxPath, filepath.Join(dir, "bin/busybox"), 0o755); err != nil {
		return fmt.Errorf("install busybox: %w", err)
	}
	if err := b.installApplets(ctx, dir); err != nil {
		return err
	}
	if err := checkStatic(b.cfg.BashPath); err != nil {
		return fmt.Errorf("install bash (Debian's bash-static): %w", err)
	}
	if err := copyFile(b.cfg.BashPath, filepath.Join(dir, "bin/bash"), 0o755); err != nil {
		return fmt.Errorf("install bash: %w", err)
	}
	if err := copyFile(b.cfg.EnvdPath, filepath.Join(dir, "usr/bin/envd"), 0o755); err != nil {
		return fmt.Errorf("install envd: %w", err)
	}
	// envd is PID 1; /init and /sbin/init point at it so any init= default works.
	for _, l := range []string{"init", "sbin/init"} {
		if err := os.Symlink("/usr/bin/envd", filepath.Join(dir, l)); err != nil {
			return fmt.Errorf("link /%s: %w", l, err)
		}
	}
	if err := copyFile(b.cfg.CACertsPath, filepath.Join(dir, "etc/ssl/certs/ca-certificates.crt"), 0o644); err != nil {
		return fmt.Errorf("install CA certificates: %w", err)
	}
	files := []struct {
		path, content string
		mode          os.FileMode
	}{
		{"etc/passwd", "root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000:user:/home/user:/bin/sh\n", 0o644},
		{"etc/group", "root:x:0:\nuser:x:1000:\n", 0o644},
		{"etc/shadow", "root:*:19000:0:99999:7:::\nuser:*:19000:0:99999:7:::\n", 0o640},
		{"etc/hosts", "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n", 0o644},
		{"etc/hostname", "sandbox\n", 0o644},
		// Empty on purpose: the agent decides the resolver at /init.
		{"etc/resolv.conf", "", 0o644},
		{"etc/os-release", "NAME=\"Wrenn minimal\"\nID=wrenn-minimal\nPRETTY_NAME=\"Wrenn minimal (busybox)\"\n", 0o644},
		{"etc/profile", "export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n", 0o644},
	}
	for _, f := range files {
		if err := os.WriteFile(filepath.Join(dir, f.path), []byte(f.content), f.mode); err != nil {
			return fmt.Errorf("write /%s: %w", f.path, err)
		}
	}
	return nil
}

// installApplets does `busybox --install -s` on the host side: one symlink
// per applet, at the path busybox itself lists.
func (b *Builder) installApplets(ctx context.Context, dir string) error {
	out, err := exec.CommandContext(ctx, b.cfg.BusyboxPath, "--list-full").Output()
	if err != nil {
		return fmt.Errorf("busybox --list-full: %w", err)
	}
	n := 0
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		rel := strings.TrimSpace(sc.Text())
		if rel == "" || strings.Contains(rel, "..") || filepath.IsAbs(rel) {
			continue
		}
		switch filepath.Base(rel) {
		case "init", "linuxrc", "busybox":
			continue // envd is init
		}
		p := filepath.Join(dir, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return fmt.Errorf("create dir for applet %s: %w", rel, err)
		}
		if err := os.Symlink("/bin/busybox", p); err != nil && !errors.Is(err, os.ErrExist) {
			return fmt.Errorf("link applet %s: %w", rel, err)
		}
		n++
	}
	if n < 50 {
		return fmt.Errorf("busybox lists only %d applets; is %s busybox-static?", n, b.cfg.BusyboxPath)
	}
	return nil
}

// checkStatic fails for dynamically linked executables: the image has no libc.
func checkStatic(path string) error {
	f, err := elf.Open(path)
	if err != nil {
		return fmt.Errorf("%s is not an ELF executable: %w", path, err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return fmt.Errorf("%s is dynamically linked; the image has no libc (build with CGO_ENABLED=0)", path)
		}
	}
	return nil
}

// BuildEnvd compiles ./cmd/envd of the module in moduleDir into out,
// statically (CGO_ENABLED=0).
func BuildEnvd(ctx context.Context, moduleDir, out string) error {
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-o", out, "./cmd/envd")
	cmd.Dir = moduleDir
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux")
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("build envd: %w: %s", err, b)
	}
	return nil
}
