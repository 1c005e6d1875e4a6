// Command envd is Wrenn's guest agent. It speaks E2B's envd protocol on one
// port (Connect RPC and HTTP). Run as PID 1 inside a VM it is also the init
// process; anywhere else it is an ordinary server for tests and development.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/wrenn-dev/wrenn/internal/envd/pid1"
	"github.com/wrenn-dev/wrenn/internal/envd/reaper"
	"github.com/wrenn-dev/wrenn/internal/envd/server"
	"github.com/wrenn-dev/wrenn/internal/envd/users"
)

func main() {
	addr := flag.String("addr", ":49983", "listen address")
	root := flag.String("root", "", "host mode: resolve every client path inside this directory (development aid, not a security boundary)")
	user := flag.String("user", "", "default user for processes and files (default: the user envd runs as; \"root\" as PID 1)")
	workdir := flag.String("workdir", "", "default working directory for processes (default: the user's home)")
	maxUserProcs := flag.Int("max-user-procs", -1, "RLIMIT_NPROC for the processes envd starts (binding for non-root users only; 0 = leave as is; default 4096 as PID 1, 0 otherwise)")
	flag.Parse()

	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	isPID1 := os.Getpid() == 1
	if *maxUserProcs < 0 {
		*maxUserProcs = 0
		if isPID1 {
			*maxUserProcs = 4096
		}
	}
	if err := run(log, isPID1, *addr, *root, *user, *workdir, *maxUserProcs); err != nil {
		log.Error("envd failed", "err", err)
		if isPID1 {
			// PID 1 exiting panics the kernel: power off cleanly instead.
			poweroff(log)
		}
		os.Exit(1)
	}
	if isPID1 {
		poweroff(log)
	}
}

func run(log *slog.Logger, isPID1 bool, addr, root, user, workdir string, maxUserProcs int) error {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)

	// envd starts every child of its process through the reaper, so one
	// wait4(-1) loop is safe in both modes. On a host envd also becomes a
	// child subreaper: orphans of user processes (the sleeps of a killed
	// fork bomb...) come back to envd and are reaped here, as in a VM.
	sub := reaper.NewSubreaper()
	go sub.Run(ctx)
	cfg := server.Config{Logger: log, Root: root, DefaultUser: user, DefaultWorkdir: workdir, Reaper: sub}
	if !isPID1 {
		if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
			log.Warn("become child subreaper", "err", err)
		}
	}
	if isPID1 {
		if root != "" {
			return errors.New("-root is for host mode only")
		}
		if err := pid1.Setup(ctx, log); err != nil {
			return fmt.Errorf("init: %w", err)
		}
		// The OOM killer must pick a user's process, never init.
		if err := os.WriteFile("/proc/self/oom_score_adj", []byte("-1000"), 0); err != nil {
			log.Warn("shield envd from the OOM killer", "err", err)
		} else {
			cfg.ShieldedFromOOM = true
		}
		// "root" by name when the image has a passwd entry for it; else
		// envd's own identity (uid 0), which needs no /etc/passwd.
		if cfg.DefaultUser == "" {
			if _, err := users.Lookup("root"); err == nil {
				cfg.DefaultUser = "root"
			}
		}
		// Only a guest may set its clock; on a host /init must never do that.
		cfg.SetClock = func(t time.Time) error {
			tv := syscall.NsecToTimeval(t.UnixNano())
			return syscall.Settimeofday(&tv)
		}
	}
	if maxUserProcs > 0 {
		// Inherited by every child; root (envd itself) is exempt, so a
		// fork bomb by a non-root user stops at this many processes.
		lim := &syscall.Rlimit{Cur: uint64(maxUserProcs), Max: uint64(maxUserProcs)}
		if err := syscall.Setrlimit(unix.RLIMIT_NPROC, lim); err != nil {
			return fmt.Errorf("set RLIMIT_NPROC: %w", err)
		}
	}
	shutdown := make(chan struct{}, 1)
	cfg.PowerOff = func() {
		select {
		case shutdown <- struct{}{}:
		default:
		}
	}

	srv, err := server.New(cfg)
	if err != nil {
		return fmt.Errorf("create server: %w", err)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", addr, err)
	}
	log.Info("envd listening", "addr", ln.Addr().String(), "pid1", isPID1)

	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ctx, ln) }()

	select {
	case err := <-errc:
		return fmt.Errorf("serve: %w", err)
	case sig := <-sigs:
		log.Info("shutting down", "signal", sig.String())
	case <-shutdown:
		log.Info("shutting down on request")
	}
	// Forward the stop to the children and give them a moment to exit.
	srv.StopProcesses(syscall.SIGTERM)
	if isPID1 {
		pid1.SignalAll(syscall.SIGTERM)
	}
	sctx, scancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer scancel()
	srv.WaitProcesses(sctx)
	srv.Shutdown(sctx)
	srv.StopProcesses(syscall.SIGKILL)
	if isPID1 {
		pid1.SignalAll(syscall.SIGKILL)
	}
	return nil
}

func poweroff(log *slog.Logger) {
	if err := pid1.PowerOff(); err != nil {
		log.Error("power off", "err", err)
	}
	// reboot(2) only returns on error; PID 1 must never exit.
	select {}
}
