// Package server wires envd's Connect services and HTTP endpoints onto one
// port, behind the access-token check.
package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"syscall"
	"time"

	"github.com/wrenn-dev/wrenn/internal/envd/filesystem"
	"github.com/wrenn-dev/wrenn/internal/envd/httpapi"
	"github.com/wrenn-dev/wrenn/internal/envd/paths"
	"github.com/wrenn-dev/wrenn/internal/envd/process"
	"github.com/wrenn-dev/wrenn/internal/envd/reaper"
	"github.com/wrenn-dev/wrenn/internal/envd/rpcutil"
	"github.com/wrenn-dev/wrenn/internal/envd/state"
	"github.com/wrenn-dev/wrenn/internal/envd/uploads"
	"github.com/wrenn-dev/wrenn/internal/envd/users"
	"github.com/wrenn-dev/wrenn/proto/envd/filesystem/filesystemconnect"
	"github.com/wrenn-dev/wrenn/proto/envd/process/processconnect"
)

// Config configures a Server.
type Config struct {
	Logger *slog.Logger
	// Root, when set, places every client path inside this directory.
	Root           string
	DefaultUser    string
	DefaultWorkdir string
	Reaper         reaper.Reaper
	// SetClock sets the wall clock from /init; nil leaves the clock alone
	// (host mode).
	SetClock func(time.Time) error
	// PowerOff is called by POST /wrenn/poweroff.
	PowerOff func()
	// ShieldedFromOOM says envd lowered its own oom_score_adj; children
	// then get theirs reset to 0.
	ShieldedFromOOM bool
}

// Server is envd's network face.
type Server struct {
	log   *slog.Logger
	procs *process.Manager
	fs    *filesystem.Service
	http  *http.Server
}

// New builds a Server.
func New(cfg Config) (*Server, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Reaper == nil {
		return nil, errors.New("server config: Reaper is required")
	}
	if cfg.DefaultUser != "" {
		if _, err := users.Lookup(cfg.DefaultUser); err != nil {
			return nil, fmt.Errorf("default user: %w", err)
		}
	}
	st := state.New(cfg.DefaultUser, cfg.DefaultWorkdir)
	env := rpcutil.Env{State: st, Resolver: paths.Resolver{Root: cfg.Root}, Uploads: uploads.New(cfg.Logger)}
	var popts []process.Option
	if cfg.ShieldedFromOOM {
		popts = append(popts, process.WithOOMScoreReset())
	}
	procs := process.NewManager(cfg.Logger, cfg.Reaper, popts...)

	mux := http.NewServeMux()
	mux.Handle(processconnect.NewProcessHandler(process.NewService(env, procs)))
	fs := filesystem.NewService(cfg.Logger, env)
	mux.Handle(filesystemconnect.NewFilesystemHandler(fs))
	api := httpapi.New(httpapi.Config{Logger: cfg.Logger, Env: env, SetClock: cfg.SetClock, PowerOff: cfg.PowerOff, Root: cfg.Root})
	api.Register(mux)

	var protos http.Protocols
	protos.SetHTTP1(true)
	protos.SetUnencryptedHTTP2(true)
	hs := &http.Server{
		Handler:           httpapi.RequireToken(st, mux),
		Protocols:         &protos,
		ReadHeaderTimeout: 30 * time.Second,
		IdleTimeout:       5 * time.Minute,
		ErrorLog:          slog.NewLogLogger(cfg.Logger.Handler(), slog.LevelWarn),
	}
	return &Server{log: cfg.Logger, procs: procs, fs: fs, http: hs}, nil
}

// Handler returns the root handler (for tests that serve it themselves).
func (s *Server) Handler() http.Handler { return s.http.Handler }

// Serve serves on ln until Shutdown or ctx ends.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	go func() {
		<-ctx.Done()
		s.http.Close()
	}()
	if err := s.http.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("http serve: %w", err)
	}
	return nil
}

// Shutdown stops accepting calls and waits for running ones until ctx ends.
func (s *Server) Shutdown(ctx context.Context) error {
	s.fs.Close()
	if err := s.http.Shutdown(ctx); err != nil {
		s.http.Close()
		return fmt.Errorf("http shutdown: %w", err)
	}
	return nil
}

// StopProcesses sends sig to every process envd started.
func (s *Server) StopProcesses(sig syscall.Signal) { s.procs.SignalAll(sig) }

// WaitProcesses waits until every process envd started has ended, or ctx ends.
func (s *Server) WaitProcesses(ctx context.Context) {
	for _, p := range s.procs.List() {
		select {
		case <-p.Done():
		case <-ctx.Done():
			return
		}
	}
}
