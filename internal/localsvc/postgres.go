// Package localsvc runs PostgreSQL and Redis as child services on this
// machine, for `wrenn dev` and for tests: a cluster made with initdb and
// started with pg_ctl, and a redis-server, each on a loopback port.
package localsvc

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"syscall"
	"time"
)

// Postgres is a running PostgreSQL cluster started by this package.
type Postgres struct {
	binDir  string
	baseDir string
	port    int
	cred    *syscall.Credential
}

// PostgresOptions tune a cluster.
type PostgresOptions struct {
	// Port to listen on; 0 picks a free one.
	Port int
	// Durable keeps fsync on; tests turn it off for speed.
	Durable bool
}

// PostgresBinDir finds the directory holding initdb and pg_ctl.
func PostgresBinDir() (string, error) {
	if p, err := exec.LookPath("pg_ctl"); err == nil {
		return filepath.Dir(p), nil
	}
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	sort.Slice(dirs, func(i, j int) bool { return majorOf(dirs[i]) > majorOf(dirs[j]) })
	for _, d := range dirs {
		if _, err := os.Stat(filepath.Join(d, "initdb")); err == nil {
			return d, nil
		}
	}
	return "", errors.New("initdb/pg_ctl not found: install Debian's postgresql package (make setup)")
}

func majorOf(binDir string) int {
	v, _ := strconv.Atoi(filepath.Base(filepath.Dir(binDir)))
	return v
}

// StartPostgres starts the cluster kept in baseDir, creating it with initdb
// when baseDir has none yet. The superuser is "postgres" with trust
// authentication on loopback only.
func StartPostgres(baseDir string, opts PostgresOptions) (*Postgres, error) {
	binDir, err := PostgresBinDir()
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(baseDir, 0o700); err != nil {
		return nil, fmt.Errorf("make postgres dir: %w", err)
	}
	p := &Postgres{binDir: binDir, baseDir: baseDir}
	// PostgreSQL refuses to run as root; run it as the postgres user then.
	if os.Geteuid() == 0 {
		cred, err := credentialFor("postgres")
		if err != nil {
			return nil, err
		}
		p.cred = cred
		if err := os.Chown(baseDir, int(cred.Uid), int(cred.Gid)); err != nil {
			return nil, fmt.Errorf("chown postgres dir: %w", err)
		}
	}
	if _, err := os.Stat(filepath.Join(p.dataDir(), "PG_VERSION")); errors.Is(err, os.ErrNotExist) {
		if err := p.run("initdb", "-D", p.dataDir(), "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync", "--no-instructions"); err != nil {
			return nil, err
		}
	}
	// A cluster left running by a killed parent would block the port and the
	// data dir: stop it first.
	if _, err := os.Stat(filepath.Join(p.dataDir(), "postmaster.pid")); err == nil {
		_ = p.run("pg_ctl", "-D", p.dataDir(), "-m", "immediate", "-w", "stop")
		_ = os.Remove(filepath.Join(p.dataDir(), "postmaster.pid"))
	}
	var lastErr error
	for attempt := 0; attempt < 3; attempt++ {
		port := opts.Port
		if port == 0 {
			if port, err = FreePort(); err != nil {
				return nil, err
			}
		}
		p.port = port
		settings := fmt.Sprintf("-p %d -k %s -c listen_addresses=127.0.0.1 -c max_connections=300", port, baseDir)
		if !opts.Durable {
			settings += " -c fsync=off -c full_page_writes=off -c synchronous_commit=off"
		}
		lastErr = p.run("pg_ctl", "-D", p.dataDir(), "-l", p.logPath(), "-o", settings, "-w", "-t", "60", "start")
		if lastErr == nil || opts.Port != 0 {
			break
		}
	}
	if lastErr != nil {
		return nil, lastErr
	}
	return p, nil
}

func (p *Postgres) dataDir() string { return filepath.Join(p.baseDir, "data") }
func (p *Postgres) logPath() string { return filepath.Join(p.baseDir, "postgres.log") }

// Port is the TCP port on 127.0.0.1.
func (p *Postgres) Port() int { return p.port }

// URL is a connection URL for database name as the superuser.
func (p *Postgres) URL(database string) string {
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d/%s?sslmode=disable", p.port, database)
}

// Stop shuts the cluster down (fast mode: clients are disconnected, data is
// kept).
func (p *Postgres) Stop() error {
	return p.run("pg_ctl", "-D", p.dataDir(), "-m", "fast", "-w", "-t", "30", "stop")
}

func (p *Postgres) run(tool string, args ...string) error {
	cmd := exec.Command(filepath.Join(p.binDir, tool), args...)
	cmd.Dir = p.baseDir
	if p.cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: p.cred}
	}
	// Its own process group: a Ctrl-C in the terminal reaches us, not the
	// server directly, so shutdown happens in order.
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Setpgid = true
	out, err := cmd.CombinedOutput()
	if err != nil {
		log, _ := os.ReadFile(p.logPath())
		if len(log) > 2000 {
			log = log[len(log)-2000:]
		}
		return fmt.Errorf("%s: %w: %s%s", tool, err, out, log)
	}
	return nil
}

func credentialFor(name string) (*syscall.Credential, error) {
	u, err := user.Lookup(name)
	if err != nil {
		return nil, fmt.Errorf("running as root and user %q is missing (install postgresql): %w", name, err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}, nil
}

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func FreePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("find free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// waitFor polls ready until it succeeds or timeout passes.
func waitFor(timeout time.Duration, ready func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		err := ready()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return err
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// PostgresDir returns preferred when the user PostgreSQL runs as can reach
// it, and otherwise a directory in that user's home named after preferred.
// As root, PostgreSQL runs as "postgres", which cannot enter e.g. /root.
func PostgresDir(preferred string) (string, error) {
	if os.Geteuid() != 0 {
		return preferred, nil
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		return "", fmt.Errorf("running as root and user postgres is missing (install postgresql): %w", err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	if traversable(filepath.Dir(preferred), uint32(uid), uint32(gid)) {
		return preferred, nil
	}
	sum := fnv32(preferred)
	return filepath.Join(u.HomeDir, fmt.Sprintf("wrenn-%08x", sum)), nil
}

// traversable reports whether uid/gid may search every directory from / to dir.
func traversable(dir string, uid, gid uint32) bool {
	for d := dir; ; d = filepath.Dir(d) {
		var st syscall.Stat_t
		if err := syscall.Stat(d, &st); err != nil {
			// A directory still to be made is created by us with 0711.
			if !errors.Is(err, syscall.ENOENT) {
				return false
			}
		} else {
			switch {
			case st.Uid == uid:
				if st.Mode&0o100 == 0 {
					return false
				}
			case st.Gid == gid:
				if st.Mode&0o010 == 0 {
					return false
				}
			default:
				if st.Mode&0o001 == 0 {
					return false
				}
			}
		}
		if d == "/" || d == "." {
			return true
		}
	}
}

func fnv32(s string) uint32 {
	h := uint32(2166136261)
	for i := 0; i < len(s); i++ {
		h ^= uint32(s[i])
		h *= 16777619
	}
	return h
}
