package localsvc

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/wrenn-dev/wrenn/internal/childproc"
)

// Redis is a running redis-server started by this package.
type Redis struct {
	cmd      *exec.Cmd
	port     int
	password string
	done     chan struct{}
}

// RedisOptions tune a server.
type RedisOptions struct {
	// Port to listen on; 0 picks a free one.
	Port int
	// Dir is the working directory; with Persist, the data and the
	// password (mode 0600, reused across starts) are kept there.
	Dir     string
	Persist bool
	// Databases is the number of logical databases (default 16).
	Databases int
}

// redisPasswordFile holds a persistent server's password, in its Dir.
const redisPasswordFile = "password"

// StartRedis starts redis-server on 127.0.0.1 only (protected mode on)
// with a generated password (requirepass) and waits until it answers.
func StartRedis(opts RedisOptions) (*Redis, error) {
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		return nil, errors.New("redis-server not found: install Debian's redis-server package (make setup)")
	}
	if opts.Databases == 0 {
		opts.Databases = 16
	}
	password, err := redisPassword(opts)
	if err != nil {
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
		// "-" reads the password from stdin: on the command line every
		// local user could read it.
		args := []string{"-", "--port", strconv.Itoa(port), "--bind", "127.0.0.1", "--protected-mode", "yes",
			"--databases", strconv.Itoa(opts.Databases), "--daemonize", "no", "--loglevel", "warning"}
		if opts.Persist {
			args = append(args, "--appendonly", "yes")
		} else {
			args = append(args, "--save", "", "--appendonly", "no")
		}
		cmd := exec.Command(bin, args...)
		cmd.Dir = opts.Dir
		cmd.Stdin = strings.NewReader("requirepass " + strconv.Quote(password) + "\n")
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
		waited, err := childproc.Start(cmd)
		if err != nil {
			return nil, fmt.Errorf("start redis-server: %w", err)
		}
		r := &Redis{cmd: cmd, port: port, password: password, done: make(chan struct{})}
		go func() { <-waited; close(r.done) }()
		if lastErr = r.waitReady(10 * time.Second); lastErr == nil {
			return r, nil
		}
		r.Stop()
		if opts.Port != 0 {
			break
		}
	}
	return nil, lastErr
}

// redisPassword is the stored password of a persistent server, or a new
// one for a throwaway server.
func redisPassword(opts RedisOptions) (string, error) {
	if !opts.Persist {
		return NewSecret()
	}
	return Secret(filepath.Join(opts.Dir, redisPasswordFile), 32)
}

func (r *Redis) waitReady(timeout time.Duration) error {
	client := redis.NewClient(&redis.Options{Addr: fmt.Sprintf("127.0.0.1:%d", r.port), Password: r.password})
	defer client.Close()
	return waitFor(timeout, func() error {
		select {
		case <-r.done:
			return fmt.Errorf("redis-server on port %d exited during start", r.port)
		default:
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		if err := client.Ping(ctx).Err(); err != nil {
			return fmt.Errorf("redis-server on port %d not ready: %w", r.port, err)
		}
		return nil
	})
}

// Port is the TCP port on 127.0.0.1.
func (r *Redis) Port() int { return r.port }

// URL is a connection URL for logical database db, with the password.
func (r *Redis) URL(db int) string {
	u := url.URL{Scheme: "redis", User: url.UserPassword("", r.password),
		Host: net.JoinHostPort("127.0.0.1", strconv.Itoa(r.port)), Path: "/" + strconv.Itoa(db)}
	return u.String()
}

// Stop asks the server to exit and waits, killing it after five seconds.
func (r *Redis) Stop() {
	_ = r.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-r.done:
	case <-time.After(5 * time.Second):
		_ = r.cmd.Process.Kill()
		<-r.done
	}
}
