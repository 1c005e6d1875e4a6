package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/spf13/cobra"

	"github.com/wrenn-dev/wrenn/internal/agent/agentapp"
	"github.com/wrenn-dev/wrenn/internal/config"
	"github.com/wrenn-dev/wrenn/internal/controlplane/app"
	"github.com/wrenn-dev/wrenn/internal/devboot"
	"github.com/wrenn-dev/wrenn/internal/localsvc"
	"github.com/wrenn-dev/wrenn/internal/migrate"
	"github.com/wrenn-dev/wrenn/internal/pki"
)

func newDevCmd() *cobra.Command {
	var opts devOptions
	cmd := &cobra.Command{
		Use:   "dev",
		Short: "Run the whole platform on this machine with embedded defaults",
		Long: `Run the whole platform locally: its own PostgreSQL and Redis under the
data dir (unless DATABASE_URL / REDIS_URL are set), migrations, the control
plane, and one host agent registered through the public registration flow.
The first run creates an admin user, a team and an API key and prints them.
Ctrl-C pauses every sandbox to disk and stops everything it started.

Everything it runs listens on 127.0.0.1 only, and its PostgreSQL and Redis
ask for passwords kept (mode 0600) in the data dir; --listen 0.0.0.0:8000
opens the control plane to the network on purpose.`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runDev(cmd.Context(), opts, cmd.OutOrStdout(), cmd.ErrOrStderr())
		},
	}
	cmd.Flags().StringVar(&opts.dataDir, "data-dir", envOr("WRENN_DEV_DIR", ".wrenn-dev"), "where dev keeps its database, Redis and credentials (env WRENN_DEV_DIR)")
	cmd.Flags().StringVar(&opts.listen, "listen", envOr("WRENN_CP_LISTEN_ADDR", devListenAddr), "address the control plane listens on; 0.0.0.0:8000 opens it to the network (env WRENN_CP_LISTEN_ADDR)")
	cmd.Flags().BoolVar(&opts.noAgent, "no-agent", false, "run without a host agent (no root or images needed; sandboxes cannot start)")
	return cmd
}

// devListenAddr keeps dev's control plane to this machine unless asked
// otherwise (`wrenn server` listens on every interface by default).
const devListenAddr = "127.0.0.1:8000"

type devOptions struct {
	dataDir string
	// listen is the control plane's address, empty for devListenAddr.
	listen  string
	noAgent bool
}

func envOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

func runDev(ctx context.Context, opts devOptions, stdout, stderr io.Writer) (err error) {
	dataDir, err := filepath.Abs(opts.dataDir)
	if err != nil {
		return fmt.Errorf("data dir: %w", err)
	}
	// 0711: the postgres user (PostgreSQL refuses to run as root) must be
	// able to pass through to its own sub-directory; the files here are 0600.
	if err := os.MkdirAll(dataDir, 0o711); err != nil {
		return fmt.Errorf("make data dir: %w", err)
	}
	say := func(format string, args ...any) { fmt.Fprintf(stdout, "==> "+format+"\n", args...) }

	databaseURL := os.Getenv("DATABASE_URL")
	if databaseURL == "" {
		pgDir, err := localsvc.PostgresDir(filepath.Join(dataDir, "postgres"))
		if err != nil {
			return err
		}
		say("starting PostgreSQL in %s", pgDir)
		pg, err := localsvc.StartPostgres(pgDir, localsvc.PostgresOptions{Durable: true})
		if err != nil {
			return fmt.Errorf("start PostgreSQL (or set DATABASE_URL): %w", err)
		}
		defer func() {
			say("stopping PostgreSQL")
			if stopErr := pg.Stop(); stopErr != nil && err == nil {
				err = fmt.Errorf("stop PostgreSQL: %w", stopErr)
			}
		}()
		if err := ensureDatabase(ctx, pg.URL("postgres"), "wrenn"); err != nil {
			return err
		}
		databaseURL = pg.URL("wrenn")
	}
	redisURL := os.Getenv("REDIS_URL")
	if redisURL == "" {
		say("starting Redis in %s", filepath.Join(dataDir, "redis"))
		if err := os.MkdirAll(filepath.Join(dataDir, "redis"), 0o700); err != nil {
			return fmt.Errorf("make redis dir: %w", err)
		}
		rs, err := localsvc.StartRedis(localsvc.RedisOptions{Dir: filepath.Join(dataDir, "redis"), Persist: true})
		if err != nil {
			return fmt.Errorf("start Redis (or set REDIS_URL): %w", err)
		}
		defer func() { say("stopping Redis"); rs.Stop() }()
		redisURL = rs.URL(0)
	}

	say("migrating the database")
	m, err := migrate.Open(databaseURL)
	if err != nil {
		return err
	}
	_, err = m.Up(ctx)
	m.Close()
	if err != nil {
		return err
	}

	// The JWT secret is kept so sessions survive a restart.
	secret, err := localsvc.Secret(filepath.Join(dataDir, "jwt-secret"), config.MinJWTSecretLen)
	if err != nil {
		return err
	}
	// So is the channels' encryption key: without it the sealed channel
	// configs of the last run could not be opened.
	encKey, err := localsvc.Secret(filepath.Join(dataDir, "encryption-key"), 64)
	if err != nil {
		return err
	}
	listen := opts.listen
	if listen == "" {
		listen = devListenAddr
	}
	defaults := map[string]string{"DATABASE_URL": databaseURL, "REDIS_URL": redisURL, "WRENN_JWT_SECRET": secret,
		"WRENN_ENCRYPTION_KEY": encKey, "WRENN_CHANNELS_ALLOW_PRIVATE": "true"}
	if os.Getenv("WRENN_CHANNELS_ALLOW_PRIVATE") == "" {
		say("notification channels may reach loopback and private addresses here (WRENN_CHANNELS_ALLOW_PRIVATE=true), so receivers on this machine work; a production control plane refuses them")
	}
	// dev runs the production path: mTLS to its agent, with its own CA
	// unless WRENN_CA_CERT/WRENN_CA_KEY name one.
	if os.Getenv("WRENN_CA_CERT") == "" && os.Getenv("WRENN_CA_KEY") == "" {
		certPath, keyPath, err := devCA(dataDir)
		if err != nil {
			return err
		}
		defaults["WRENN_CA_CERT"], defaults["WRENN_CA_KEY"] = certPath, keyPath
	}
	cfg, err := config.LoadControlPlane(func(name string) string {
		if name == "WRENN_CP_LISTEN_ADDR" {
			return listen // the flag, whose default is the variable
		}
		if v := os.Getenv(name); v != "" {
			return v
		}
		return defaults[name]
	})
	if err != nil {
		return err
	}
	logger := newLogger(stderr, cfg.Log)

	// The control plane outlives the agent: on Ctrl-C the agent pauses its
	// sandboxes first, and the control plane must still be there for it.
	cpCtx, stopCP := context.WithCancel(context.WithoutCancel(ctx))
	defer stopCP()
	cpStarted := make(chan app.Started, 1)
	cpDone := make(chan error, 1)
	go func() { cpDone <- app.Run(cpCtx, cfg, logger, func(s app.Started) { cpStarted <- s }) }()
	var cp app.Started
	select {
	case cp = <-cpStarted:
	case err := <-cpDone:
		return err
	}
	base := "http://" + displayAddr(cp.Addr)
	waitCP := func() error {
		stopCP()
		return <-cpDone
	}

	boot, err := devboot.Bootstrap(ctx, devboot.Options{
		BaseURL:   base,
		StatePath: filepath.Join(dataDir, "dev-state.json"),
		AgentDir:  agentDir(),
		NoAgent:   opts.noAgent,
	})
	if err != nil {
		return errors.Join(err, waitCP())
	}

	// agentDone stays nil (never ready) without an agent.
	var agentDone chan error
	if !opts.noAgent {
		acfg, err := devAgentConfig(base, boot.HostToken)
		if err != nil {
			return errors.Join(err, waitCP())
		}
		say("starting the host agent (WRENN_DIR=%s)", acfg.Dir)
		agentCtx, stopAgent := context.WithCancel(ctx)
		defer stopAgent()
		agentDone = make(chan error, 1)
		before, err := boot.Host(ctx)
		if err != nil {
			return errors.Join(err, waitCP())
		}
		go func() {
			agentDone <- agentapp.RunWith(agentCtx, acfg, logger.With("role", "agent"), agentapp.RunOptions{PauseOnExit: true})
		}()
		ready := agentReadiness{boot: boot, address: acfg.Registration.Address, before: before, reconcile: cp.Reconcile}
		if exited, err := ready.wait(ctx, agentReadyTimeout, agentDone); err != nil {
			stopAgent()
			if !exited {
				<-agentDone // let it stop cleanly before the control plane goes
			}
			return errors.Join(err, waitCP())
		}
	}

	printDevBanner(stdout, base, dataDir, boot, opts.noAgent)

	var agentErr error
	select {
	case <-ctx.Done():
		say("stopping: pausing sandboxes and shutting down")
		if agentDone != nil {
			agentErr = <-agentDone
		}
	case agentErr = <-agentDone:
		if agentErr != nil {
			logger.Error("host agent stopped", "err", agentErr)
		}
	case err := <-cpDone:
		cpDone <- err
	}
	return errors.Join(agentErr, waitCP())
}

// devCA is dev's CA under its data dir, made on the first run.
func devCA(dataDir string) (certPath, keyPath string, err error) {
	dir := filepath.Join(dataDir, "ca")
	certPath, keyPath = filepath.Join(dir, pki.CACertFile), filepath.Join(dir, pki.CAKeyFile)
	if _, err := os.Stat(certPath); err == nil {
		return certPath, keyPath, nil // checked with its key when the configuration loads
	}
	if certPath, keyPath, err = pki.WriteCA(dir, time.Now()); err != nil {
		return "", "", fmt.Errorf("make dev's CA: %w", err)
	}
	return certPath, keyPath, nil
}

// agentDir is where the dev agent keeps images and state: the same
// WRENN_DIR that `make images` builds into.
func agentDir() string { return envOr("WRENN_DIR", "/var/lib/wrenn") }

// devAgentConfig is the agent's configuration for dev: the environment, a
// loopback listen address on a free port, and registration with this
// control plane.
func devAgentConfig(cpURL, token string) (config.Agent, error) {
	port, err := localsvc.FreePort()
	if err != nil {
		return config.Agent{}, err
	}
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	overrides := map[string]string{
		"WRENN_AGENT_LISTEN_ADDR": addr,
		"WRENN_AGENT_ADDRESS":     addr,
		"WRENN_CP_URL":            cpURL,
		"WRENN_REGISTER_TOKEN":    token,
		"WRENN_DIR":               agentDir(),
	}
	return config.LoadAgent(func(name string) string {
		if v, ok := overrides[name]; ok {
			return v
		}
		return os.Getenv(name)
	})
}

// agentReadyTimeout bounds the wait for the dev agent (registration,
// first heartbeat, first reconcile); a first start may unpack images.
const agentReadyTimeout = 2 * time.Minute

// agentReadiness is what makes the platform ready after the agent starts:
// a heartbeat from this run's agent (not the online status the previous
// run left behind, whose agent listened elsewhere) and a reconcile pass
// after it, so that the banner's curl works at once and every sandbox
// shows its real state (one paused at the last Ctrl-C shows paused).
type agentReadiness struct {
	boot      devboot.Result
	address   string            // where this run's agent listens
	before    devboot.HostState // the host before it started
	reconcile func(context.Context) error
}

// wait polls until the platform is ready or timeout passes; agentExited
// says whether the agent's result was consumed.
func (a agentReadiness) wait(ctx context.Context, timeout time.Duration, agentDone <-chan error) (agentExited bool, err error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var seen devboot.HostState
	var lastErr error
	for {
		select {
		case err := <-agentDone:
			if err == nil {
				err = errors.New("host agent exited during start")
			}
			return true, fmt.Errorf("host agent: %w", err)
		case <-ctx.Done():
			return false, a.timeoutError(timeout, seen, lastErr)
		case <-time.After(200 * time.Millisecond):
		}
		h, err := a.boot.Host(ctx)
		if err != nil {
			lastErr = err
			continue
		}
		seen = h
		if !h.HeardFrom(a.address, a.before) {
			continue
		}
		if lastErr = a.reconcile(ctx); lastErr == nil {
			return false, nil
		}
	}
}

func (a agentReadiness) timeoutError(timeout time.Duration, seen devboot.HostState, lastErr error) error {
	beat := "never"
	if seen.LastHeartbeatAt != nil {
		beat = seen.LastHeartbeatAt.Format(time.RFC3339Nano)
	}
	msg := fmt.Sprintf("the host agent was not ready within %s: waiting for a heartbeat from this run's agent (at %s) and a reconcile after it; the host is %q at %q, last heartbeat %s",
		timeout, a.address, seen.Status, seen.Address, beat)
	if lastErr != nil {
		return fmt.Errorf("%s: %w", msg, lastErr)
	}
	return errors.New(msg)
}

func printDevBanner(w io.Writer, base, dataDir string, boot devboot.Result, noAgent bool) {
	fmt.Fprintf(w, `
Wrenn is running.
  Dashboard:  %[1]s/
  API:        %[1]s/v1
  API docs:   %[1]s/docs
  Health:     %[1]s/health
  Data dir:   %[2]s

  Admin login:  %[3]s / %[4]s
  API key:      %[5]s
`, base, dataDir, boot.Email, boot.Password, boot.APIKey)
	if noAgent {
		fmt.Fprintf(w, "\nNo host agent (--no-agent): sandboxes cannot start.\n")
	} else {
		fmt.Fprintf(w, `
Create a sandbox and run a command:
  id=$(curl -s -X POST %[1]s/v1/sandboxes -H 'X-API-Key: %[2]s' -H 'Content-Type: application/json' -d '{"template":"minimal"}' | sed -n 's/.*"id":"\([^"]*\)".*/\1/p')
  curl -s -X POST %[1]s/v1/sandboxes/$id/exec -H 'X-API-Key: %[2]s' -H 'Content-Type: application/json' -d '{"cmd":"uname","args":["-a"]}'
`, base, boot.APIKey)
	}
	fmt.Fprintf(w, "\nPress Ctrl-C to stop (running sandboxes are paused to disk).\n")
}

// displayAddr turns a wildcard listen address into one a browser can open.
func displayAddr(addr net.Addr) string {
	host, port, err := net.SplitHostPort(addr.String())
	if err != nil {
		return addr.String()
	}
	if ip := net.ParseIP(host); ip == nil || ip.IsUnspecified() {
		host = "localhost"
	}
	return net.JoinHostPort(host, port)
}

func ensureDatabase(ctx context.Context, adminURL, name string) error {
	conn, err := pgx.Connect(ctx, adminURL)
	if err != nil {
		return fmt.Errorf("connect to local PostgreSQL: %w", err)
	}
	defer conn.Close(ctx)
	var exists bool
	if err := conn.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)", name).Scan(&exists); err != nil {
		return fmt.Errorf("look up database %s: %w", name, err)
	}
	if exists {
		return nil
	}
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()); err != nil {
		return fmt.Errorf("create database %s: %w", name, err)
	}
	return nil
}
