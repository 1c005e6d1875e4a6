// Package localsvc runs PostgreSQL and Redis as child services on this
// machine, for `wrenn dev` and for tests: a cluster made with initdb and
// started with pg_ctl, and a redis-server, each on a loopback port and each
// behind a generated password, so other local users cannot get in.
package localsvc

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Postgres is a running PostgreSQL cluster started by this package.
type Postgres struct {
	binDir   string
	baseDir  string
	port     int
	password string
	cred     *syscall.Credential
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

// superuserPasswordFile holds the superuser's password, in the cluster's
// base directory.
const superuserPasswordFile = "superuser-password"

// hbaConf is the whole of pg_hba.conf: a password (SCRAM) for every
// connection, so that other local users cannot get in; the server listens
// only on 127.0.0.1 and on a socket in the 0700 base directory.
const hbaConf = `# Written by wrenn on every start.
local all all scram-sha-256
host  all all 127.0.0.1/32 scram-sha-256
`

// StartPostgres starts the cluster kept in baseDir, creating it with initdb
// when baseDir has none yet. The superuser is "postgres"; it authenticates
// with scram-sha-256 and a generated password kept in baseDir (mode 0600,
// reused across starts). Each start sets that password and rewrites
// pg_hba.conf, which also moves a cluster made with trust authentication
// to passwords. The server listens on 127.0.0.1 and on a Unix socket in
// baseDir (mode 0700).
func StartPostgres(baseDir string, opts PostgresOptions) (*Postgres, error) {
	binDir, err := PostgresBinDir()
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(baseDir, 0o700); err != nil {
		return nil, fmt.Errorf("make postgres dir: %w", err)
	}
	// MkdirAll keeps the mode of a directory made by an older version.
	if err := os.Chmod(baseDir, 0o700); err != nil {
		return nil, fmt.Errorf("chmod postgres dir: %w", err)
	}
	p := &Postgres{binDir: binDir, baseDir: baseDir}
	// PostgreSQL refuses to run as root; run it as the postgres user then.
	if os.Geteuid() == 0 {
		cred, err := credentialFor("postgres")
		if err != nil {
			return nil, err
		}
		p.cred = cred
	}
	pwPath := filepath.Join(baseDir, superuserPasswordFile)
	if p.password, err = Secret(pwPath, 32); err != nil {
		return nil, err
	}
	for _, path := range []string{baseDir, pwPath} {
		if err := p.own(path); err != nil {
			return nil, err
		}
	}
	if _, err := os.Stat(filepath.Join(p.dataDir(), "PG_VERSION")); errors.Is(err, os.ErrNotExist) {
		if err := p.run("initdb", "-D", p.dataDir(), "-U", "postgres", "-A", "scram-sha-256", "--pwfile", pwPath,
			"-E", "UTF8", "--no-sync", "--no-instructions"); err != nil {
			return nil, err
		}
	} else {
		// A cluster left running by a killed parent would block the port
		// and the data dir: stop it first.
		if _, err := os.Stat(filepath.Join(p.dataDir(), "postmaster.pid")); err == nil {
			_ = p.run("pg_ctl", "-D", p.dataDir(), "-m", "immediate", "-w", "stop")
			_ = os.Remove(filepath.Join(p.dataDir(), "postmaster.pid"))
		}
		if err := p.setPassword(); err != nil {
			return nil, err
		}
	}
	hba := filepath.Join(p.dataDir(), "pg_hba.conf")
	if err := os.WriteFile(hba, []byte(hbaConf), 0o600); err != nil {
		return nil, fmt.Errorf("write pg_hba.conf: %w", err)
	}
	if err := p.own(hba); err != nil {
		return nil, err
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
		settings := fmt.Sprintf("-p %d -k %s -c listen_addresses=127.0.0.1 -c max_connections=300 -c password_encryption=scram-sha-256", port, baseDir)
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

// setPassword gives the superuser the stored password in single-user mode,
// which needs no authentication and opens no socket.
func (p *Postgres) setPassword() error {
	// log_min_error_statement keeps the statement, password and all, out of
	// the output even when it fails.
	stmt := "ALTER ROLE postgres PASSWORD '" + strings.ReplaceAll(p.password, "'", "''") + "';\n"
	out, err := p.output(strings.NewReader(stmt), "postgres", "--single", "-D", p.dataDir(),
		"-c", "password_encryption=scram-sha-256", "-c", "log_min_error_statement=panic", "postgres")
	if err == nil && strings.Contains(out, "ERROR") {
		err = errors.New("statement failed")
	}
	if err != nil {
		return fmt.Errorf("set the PostgreSQL superuser password: %w: %s", err, strings.ReplaceAll(out, p.password, "[password]"))
	}
	return nil
}

// own gives path to the user PostgreSQL runs as.
func (p *Postgres) own(path string) error {
	if p.cred == nil {
		return nil
	}
	if err := os.Chown(path, int(p.cred.Uid), int(p.cred.Gid)); err != nil {
		return fmt.Errorf("chown %s to postgres: %w", path, err)
	}
	return nil
}

func (p *Postgres) dataDir() string { return filepath.Join(p.baseDir, "data") }
func (p *Postgres) logPath() string { return filepath.Join(p.baseDir, "postgres.log") }

// Port is the TCP port on 127.0.0.1.
func (p *Postgres) Port() int { return p.port }

// SocketDir is the directory holding the server's Unix socket.
func (p *Postgres) SocketDir() string { return p.baseDir }

// URL is a connection URL for database name as the superuser, with its
// password.
func (p *Postgres) URL(database string) string {
	u := url.URL{Scheme: "postgres", User: url.UserPassword("postgres", p.password),
		Host: net.JoinHostPort("127.0.0.1", strconv.Itoa(p.port)), Path: "/" + database, RawQuery: "sslmode=disable"}
	return u.String()
}

// Stop shuts the cluster down (fast mode: clients are disconnected, data is
// kept).
func (p *Postgres) Stop() error {
	return p.run("pg_ctl", "-D", p.dataDir(), "-m", "fast", "-w", "-t", "30", "stop")
}

func (p *Postgres) run(tool string, args ...string) error {
	out, err := p.output(nil, tool, args...)
	if err != nil {
		log, _ := os.ReadFile(p.logPath())
		if len(log) > 2000 {
			log = log[len(log)-2000:]
		}
		return fmt.Errorf("%s: %w: %s%s", tool, err, out, log)
	}
	return nil
}

// output runs one of PostgreSQL's programs as the cluster's user.
func (p *Postgres) output(stdin io.Reader, tool string, args ...string) (string, error) {
	cmd := exec.Command(filepath.Join(p.binDir, tool), args...)
	cmd.Dir = p.baseDir
	cmd.Stdin = stdin
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
	return string(out), err
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
