package images

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"
)

// BaseTemplate is the Debian template E2B's SDKs start by default.
const BaseTemplate = "base"

// BaseUser is the base template's default user (uid 1000, passwordless
// sudo), as E2B's SDKs and tests expect.
const BaseUser = "user"

// Bumped when the base recipe changes in a way its inputs do not show.
const (
	baseDebianRecipeVersion = "1"
	baseRootfsRecipeVersion = "1"
)

// BasePackages are installed on top of Debian's minbase variant
// (essential packages and apt), without recommends.
var BasePackages = []string{"bash", "ca-certificates", "curl", "git", "python3", "sudo"}

// baseDpkgExcludes keep documentation and translations out of the image.
var baseDpkgExcludes = []string{
	"path-exclude=/usr/share/doc/*",
	"path-include=/usr/share/doc/*/copyright",
	"path-exclude=/usr/share/man/*",
	"path-exclude=/usr/share/info/*",
	"path-exclude=/usr/share/locale/*",
	"path-include=/usr/share/locale/locale.alias",
	"path-exclude=/usr/share/lintian/*",
}

// baseCustomize runs inside the new tree (mmdebstrap's customize hook, $1
// is the tree): the user and its sudo rule.
const baseCustomize = `set -e
chroot "$1" useradd --create-home --uid 1000 --user-group --shell /bin/bash ` + BaseUser + `
echo '` + BaseUser + ` ALL=(ALL:ALL) NOPASSWD: ALL' > "$1/etc/sudoers.d/` + BaseUser + `"
chmod 0440 "$1/etc/sudoers.d/` + BaseUser + `"
rm -rf "$1"/var/log/apt/* "$1"/var/log/dpkg.log "$1"/var/cache/debconf/*-old "$1"/var/lib/dpkg/*-old`

// debianKey is the cache key of the Debian tree (everything but envd).
func (b *Builder) debianKey() string {
	parts := [][]byte{[]byte(baseDebianRecipeVersion), []byte(b.cfg.DebianSuite), []byte(b.cfg.DebianMirror), []byte(baseCustomize)}
	for _, l := range [][]string{BasePackages, baseDpkgExcludes} {
		parts = append(parts, []byte(strings.Join(l, "\n")))
	}
	return contentKey(parts...)
}

// baseKey is the cache key of the base root filesystem.
func (b *Builder) baseKey(debianKey, envdSum string) string {
	return contentKey([]byte(baseRootfsRecipeVersion), []byte(debianKey), []byte(envdSum), []byte(strconv.Itoa(b.cfg.BaseSizeMiB)))
}

// debianTar is the cached Debian tree of key (a tarball: ownership, modes
// and device nodes survive in it without root-owned files in the cache).
func (p Paths) debianTar(key string) string {
	return filepath.Join(p.CacheDir(), "debian-"+key+".tar")
}

// buildBase makes the base template: Debian's packages from the mirror
// (downloaded once per recipe into a cached tarball), envd as init.
func (b *Builder) buildBase(ctx context.Context, kernelKey string) (key, path string, built bool, err error) {
	envdSum, err := b.checkEnvd()
	if err != nil {
		return "", "", false, err
	}
	dkey := b.debianKey()
	key = b.baseKey(dkey, envdSum)
	tarball := b.paths.debianTar(dkey)
	path, built, err = b.installRootfs(ctx, rootfsSpec{
		name: BaseTemplate, key: key, sizeMiB: b.cfg.BaseSizeMiB, kernelKey: kernelKey, envdSum: envdSum,
		defaultUser: BaseUser,
		populate: func(ctx context.Context, dir string) error {
			if err := b.debianTree(ctx, tarball); err != nil {
				return err
			}
			return b.populateBase(ctx, tarball, dir)
		},
	})
	return key, path, built, err
}

// debianTree makes the Debian tarball unless it is cached.
func (b *Builder) debianTree(ctx context.Context, tarball string) error {
	log := b.cfg.Logger
	if fileExists(tarball) {
		log.Info("base: Debian tree cached", "path", tarball)
		return nil
	}
	if os.Geteuid() != 0 {
		return errors.New("the base template is built by mmdebstrap as root (it installs packages owned by other users): run as root (sudo make images)")
	}
	if _, err := exec.LookPath("mmdebstrap"); err != nil {
		return errors.New("mmdebstrap not installed: install Debian's mmdebstrap package (make setup does)")
	}
	start := time.Now()
	log.Info("base: installing Debian packages", "suite", b.cfg.DebianSuite, "mirror", b.cfg.DebianMirror,
		"packages", strings.Join(BasePackages, ","))
	// mmdebstrap picks the output format from the name: write a .tar
	// beside the final one, renamed into place when complete.
	tmp := strings.TrimSuffix(tarball, ".tar") + ".partial-" + strconv.Itoa(os.Getpid()) + ".tar"
	defer os.Remove(tmp)
	args := []string{"mmdebstrap", "--mode=root", "--variant=minbase", "--format=tar",
		"--include=" + strings.Join(BasePackages, ","),
		`--aptopt=APT::Install-Recommends "false"`,
		"--customize-hook=" + baseCustomize}
	for _, x := range baseDpkgExcludes {
		args = append(args, "--dpkgopt="+x)
	}
	args = append(args, b.cfg.DebianSuite, tmp, b.cfg.DebianMirror)
	progress := &stepLog{log: log, prefix: "I: ", msg: "base: mmdebstrap"}
	if err := b.run(ctx, b.paths.CacheDir(), progress, args...); err != nil {
		return fmt.Errorf("install Debian packages (mmdebstrap): %w", err)
	}
	if err := os.Rename(tmp, tarball); err != nil {
		return fmt.Errorf("install Debian tarball: %w", err)
	}
	log.Info("base: Debian tree ready", "path", tarball, "took", time.Since(start).Round(time.Second))
	b.pruneDebianTars(tarball)
	return nil
}

// pruneDebianTars removes Debian tarballs of other recipes: only the
// current one is ever extracted again.
func (b *Builder) pruneDebianTars(keep string) {
	old, _ := filepath.Glob(filepath.Join(b.paths.CacheDir(), "debian-*.tar"))
	for _, p := range old {
		if p != keep {
			if err := os.Remove(p); err == nil {
				b.cfg.Logger.Info("base: removed superseded Debian tarball", "path", p)
			}
		}
	}
}

// populateBase extracts the Debian tree into dir and makes envd its init.
func (b *Builder) populateBase(ctx context.Context, tarball, dir string) error {
	b.cfg.Logger.Info("base: extracting the Debian tree", "path", tarball)
	if err := b.run(ctx, dir, io.Discard, "tar", "--extract", "--file", tarball, "--directory", dir,
		"--preserve-permissions", "--same-owner", "--numeric-owner", "--xattrs", "--xattrs-include=*"); err != nil {
		return fmt.Errorf("extract the Debian tree: %w", err)
	}
	if err := copyFile(b.cfg.EnvdPath, filepath.Join(dir, "usr/bin/envd"), 0o755); err != nil {
		return fmt.Errorf("install envd: %w", err)
	}
	// envd is PID 1 (init= names /usr/bin/envd); /init and /sbin/init
	// point at it so any default works. /sbin is usr/sbin in Debian.
	for _, l := range []string{"init", "usr/sbin/init"} {
		p := filepath.Join(dir, l)
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("replace /%s: %w", l, err)
		}
		if err := os.Symlink("/usr/bin/envd", p); err != nil {
			return fmt.Errorf("link /%s: %w", l, err)
		}
	}
	files := []struct {
		path, content string
	}{
		{"etc/hostname", "sandbox\n"},
		{"etc/hosts", "127.0.0.1\tlocalhost\n127.0.1.1\tsandbox\n::1\tlocalhost ip6-localhost ip6-loopback\n"},
		// Empty on purpose: the agent decides the resolver at /init.
		{"etc/resolv.conf", ""},
	}
	for _, f := range files {
		p := filepath.Join(dir, f.path)
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("replace /%s: %w", f.path, err)
		}
		if err := os.WriteFile(p, []byte(f.content), 0o644); err != nil {
			return fmt.Errorf("write /%s: %w", f.path, err)
		}
	}
	return nil
}

// stepLog logs each line of a tool's output that starts with prefix, so
// a long step shows where it is.
type stepLog struct {
	log     *slog.Logger
	prefix  string
	msg     string
	mu      sync.Mutex
	partial []byte
}

func (s *stepLog) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	data := append(s.partial, p...)
	for {
		i := bytes.IndexByte(data, '\n')
		if i < 0 {
			break
		}
		if line := string(data[:i]); strings.HasPrefix(line, s.prefix) {
			s.log.Info(s.msg, "step", strings.TrimSpace(strings.TrimPrefix(line, s.prefix)))
		}
		data = data[i+1:]
	}
	s.partial = append(s.partial[:0], data...)
	return len(p), nil
}
