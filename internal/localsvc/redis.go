package localsvc

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"strconv"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/wrenn-dev/wrenn/internal/childproc"
)

// Redis is a running redis-server started by this package.
type Redis struct {
	cmd  *exec.Cmd
	port int
	done chan struct{}
}

// RedisOptions tune a server.
type RedisOptions struct {
	// Port to listen on; 0 picks a free one.
	Port int
	// Dir is the working directory; with Persist, the dump is kept there.
	Dir     string
	Persist bool
	// Databases is the number of logical databases (default 16).
	Databases int
}

// StartRedis starts redis-server on 127.0.0.1 and waits until it answers.
func StartRedis(opts RedisOptions) (*Redis, error) {
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		return nil, errors.New("redis-server not found: install Debian's redis-server package (make setup)")
	}
	if opts.Databases == 0 {
		opts.Databases = 16
	}
	var lastErr error
	for attempt := 0; attempt < 3; attempt++ {
		port := opts.Port
		if port == 0 {
			if port, err = FreePort(); err != nil {
				return nil, err
			}
		}
		args := []string{"--port", strconv.Itoa(port), "--bind", "127.0.0.1", "--protected-mode", "yes",
			"--databases", strconv.Itoa(opts.Databases), "--daemonize", "no", "--loglevel", "warning"}
		if opts.Persist {
			args = append(args, "--appendonly", "yes")
		} else {
			args = append(args, "--save", "", "--appendonly", "no")
		}
		cmd := exec.Command(bin, args...)
		cmd.Dir = opts.Dir
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
		waited, err := childproc.Start(cmd)
		if err != nil {
			return nil, fmt.Errorf("start redis-server: %w", err)
		}
		r := &Redis{cmd: cmd, port: port, done: make(chan struct{})}
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

func (r *Redis) waitReady(timeout time.Duration) error {
	client := redis.NewClient(&redis.Options{Addr: fmt.Sprintf("127.0.0.1:%d", r.port)})
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

// URL is a connection URL for logical database db.
func (r *Redis) URL(db int) string { return fmt.Sprintf("redis://127.0.0.1:%d/%d", r.port, db) }

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
