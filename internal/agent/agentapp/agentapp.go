// Package agentapp assembles the host agent: configuration, VMM driver,
// network, storage, sandbox manager and RPC server.
package agentapp

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os/exec"
	"path/filepath"
	"time"

	"connectrpc.com/connect"

	"github.com/wrenn-dev/wrenn/internal/agent/images"
	"github.com/wrenn-dev/wrenn/internal/agent/network"
	"github.com/wrenn-dev/wrenn/internal/agent/registration"
	"github.com/wrenn-dev/wrenn/internal/agent/sandbox"
	"github.com/wrenn-dev/wrenn/internal/agent/server"
	"github.com/wrenn-dev/wrenn/internal/agent/storage"
	"github.com/wrenn-dev/wrenn/internal/agent/vmm"
	"github.com/wrenn-dev/wrenn/internal/agent/vmm/accel"
	"github.com/wrenn-dev/wrenn/internal/agent/vmm/firecracker"
	"github.com/wrenn-dev/wrenn/internal/agent/vmm/qemu"
	"github.com/wrenn-dev/wrenn/internal/config"
	"github.com/wrenn-dev/wrenn/internal/pki"
	"github.com/wrenn-dev/wrenn/internal/telemetry"
)

// Parts are the assembled pieces of an agent, for Run and for tests.
type Parts struct {
	Manager *sandbox.Manager
	Server  *server.Server
	Network *network.Manager
	Driver  vmm.Driver
	Accel   vmm.Accel
	// Contact is touched by every RPC a control plane makes to the agent.
	Contact *registration.Contact
	// Certs holds the host certificate in mTLS mode (empty otherwise).
	Certs *pki.HostCertStore
	// Telemetry holds the agent's Prometheus series.
	Telemetry *telemetry.Agent
}

// Options tune Build beyond the configuration (tests use them).
type Options struct {
	// Network overrides the network configuration (zero: defaults).
	Network network.Config
	// Manager fields copied over the defaults when set.
	Manager func(*sandbox.Config)
}

// Build detects acceleration, chooses the VMM, prepares the network and
// storage, creates the manager and re-adopts what an earlier agent left.
func Build(ctx context.Context, cfg config.Agent, log *slog.Logger, opts Options) (*Parts, error) {
	paths := images.NewPaths(cfg.Dir)
	kernel, kerr := paths.ResolvedKernel()
	if kerr != nil {
		log.Warn("no kernel yet: sandboxes cannot be created until `wrenn images build` has run", "err", kerr)
	}
	mode, err := accel.ParseMode(cfg.Accel)
	if err != nil {
		return nil, err
	}
	det := accel.NewDetector(accel.Options{Mode: mode, KernelPath: kernel, Logger: log})
	res, err := det.Detect(ctx)
	if err != nil {
		return nil, fmt.Errorf("detect acceleration: %w", err)
	}
	drv, raw, err := chooseDriver(cfg.VMM, res.Accel, log)
	if err != nil {
		return nil, err
	}
	log.Info("agent vmm", "driver", drv.Name(), "accel", res.Accel, "reason", res.Reason)

	ncfg := opts.Network
	if ncfg.Prefix == "" {
		ncfg.Prefix = cfg.NetPrefix
	}
	if ncfg.HostRange == "" {
		ncfg.HostRange = cfg.NetRange
	}
	if ncfg.Logger == nil {
		ncfg.Logger = log
	}
	nm, err := network.New(ncfg)
	if err != nil {
		return nil, err
	}
	if err := nm.Init(ctx); err != nil {
		return nil, fmt.Errorf("network init (the agent needs root): %w", err)
	}
	store, err := storage.New(storage.Config{CacheDir: filepath.Join(cfg.Dir, "cache", "overlays"), Logger: log})
	if err != nil {
		return nil, err
	}
	acc := res.Accel
	var mgr *sandbox.Manager // read by scrapes, which start after Build
	tel := telemetry.NewAgent(func(context.Context) (map[string]float64, error) { return mgr.StateCounts(), nil }, log)
	mcfg := sandbox.Config{Observe: tel.ObserveOperation,
		Dir: cfg.Dir, Driver: drv, Accel: acc, Net: NetAdapter{M: nm}, Disks: DiskAdapter{S: store, Raw: raw}, Logger: log,
		MaxVCPUs: cfg.MaxVCPUs, MaxMemoryMB: cfg.MaxMemoryMB, MaxDiskMB: cfg.MaxDiskMB,
		KernelArgs: func(slot sandbox.NetSlot) string {
			args, err := qemu.KernelCmdline(qemu.KernelParams{Accel: acc, Extra: []string{slot.KernelIPArg}})
			if err != nil {
				// Only a malformed slot can cause this; fall back to the plain line.
				log.Error("kernel command line", "err", err)
				return sandbox.DefaultKernelArgs(slot)
			}
			return args
		},
	}
	if opts.Manager != nil {
		opts.Manager(&mcfg)
	}
	mgr, err = sandbox.New(mcfg)
	if err != nil {
		return nil, err
	}
	n, rerr := mgr.Recover(ctx)
	if rerr != nil {
		log.Warn("recover sandboxes", "err", rerr)
	}
	log.Info("sandboxes recovered", "running", n)
	// Whatever a crashed agent left and no known sandbox holds goes now.
	keep := mgr.SlotNames()
	if _, err := nm.CleanupStale(ctx, func(name string) bool { return keep[name] }); err != nil {
		log.Warn("network cleanup", "err", err)
	}
	contact := &registration.Contact{}
	certs := &pki.HostCertStore{}
	scfg := server.Config{Manager: mgr, Dir: cfg.Dir, Logger: log, OnCall: contact.Touch,
		CapacityVCPUs: cfg.CapacityVCPUs, CapacityMemoryMB: cfg.CapacityMemoryMB, Certs: certs,
		HandlerOptions: []connect.HandlerOption{connect.WithInterceptors(tel.ServerInterceptor())}}
	if telemetry.OnMainPort(cfg.Metrics) {
		scfg.Metrics = telemetry.Handler(tel.Registry, cfg.Metrics.Token)
	}
	srv, err := server.New(scfg)
	if err != nil {
		return nil, err
	}
	return &Parts{Manager: mgr, Server: srv, Network: nm, Driver: drv, Accel: acc, Contact: contact, Certs: certs, Telemetry: tel}, nil
}

// chooseDriver picks the VMM: firecracker needs KVM and its binary; auto
// prefers it when both are there, else QEMU.
func chooseDriver(want string, acc vmm.Accel, log *slog.Logger) (vmm.Driver, bool, error) {
	if want == "" {
		want = "auto"
	}
	if want == "auto" {
		want = "qemu"
		if _, err := exec.LookPath("firecracker"); err == nil && acc == vmm.AccelKVM {
			want = "firecracker"
		}
	}
	switch want {
	case "firecracker":
		if acc != vmm.AccelKVM {
			return nil, false, errors.New("WRENN_VMM=firecracker needs working KVM; this host runs guests under TCG only (use WRENN_VMM=qemu)")
		}
		d, err := firecracker.New(firecracker.Options{Logger: log})
		if err != nil {
			return nil, false, fmt.Errorf("firecracker driver: %w", err)
		}
		return d, true, nil
	case "qemu":
		d, err := qemu.New(qemu.Options{Accel: acc, Logger: log})
		if err != nil {
			return nil, false, fmt.Errorf("qemu driver: %w", err)
		}
		return d, false, nil
	}
	return nil, false, fmt.Errorf("WRENN_VMM=%q: want auto, firecracker or qemu", want)
}

// RunOptions change what Run does around serving.
type RunOptions struct {
	// PauseOnExit pauses every sandbox (snapshot to disk, VM torn down) and
	// removes the host's network table when the agent stops, so nothing runs
	// once it is gone; `wrenn dev` uses it. Production agents leave VMs
	// running for the next agent process to adopt.
	PauseOnExit bool
	// Listening, if set, is told the bound address before serving.
	Listening func(net.Addr)
}

// Run builds the agent and serves until ctx ends. Running VMs are left
// running on exit: the next agent process adopts them.
func Run(ctx context.Context, cfg config.Agent, log *slog.Logger) error {
	return RunWith(ctx, cfg, log, RunOptions{})
}

// RunWith is Run with options. The agent binds its port, then registers
// (a control plane treats it as online from then on), then serves: it
// learns its mode from its credentials. Registered with a control plane
// that has a CA, it serves mutual TLS only; otherwise plain HTTP, on
// loopback unless WRENN_AGENT_INSECURE_LISTEN is set.
func RunWith(ctx context.Context, cfg config.Agent, log *slog.Logger, opts RunOptions) error {
	p, err := Build(ctx, cfg, log, Options{})
	if err != nil {
		return err
	}
	rctx, cancel := context.WithCancel(ctx)
	reaperDone := make(chan struct{})
	go func() { p.Manager.Run(rctx); close(reaperDone) }()
	defer func() {
		// A pause the reaper started finishes before the process exits
		// (it runs on a detached context); then let go of the VMs.
		cancel()
		<-reaperDone
		if opts.PauseOnExit {
			pauseOnExit(p, log)
		}
		p.Manager.Close()
		if opts.PauseOnExit {
			shutCtx, done := context.WithTimeout(context.Background(), 30*time.Second)
			defer done()
			if err := p.Network.Shutdown(shutCtx); err != nil {
				log.Warn("network shutdown", "err", err)
			}
		}
	}()
	var (
		hb       *registration.Heartbeater
		register func(context.Context) error
	)
	if belongsToControlPlane(cfg) {
		register = func(ctx context.Context) (err error) {
			hb, err = prepareRegistration(ctx, cfg, p, log)
			return err
		}
	}
	ln, err := listenRegistered(ctx, cfg, p.Certs, register, log)
	if err != nil || ln == nil { // nil: stopped while registering
		return err
	}
	defer ln.Close()
	go func() {
		if err := telemetry.Serve(rctx, cfg.Metrics, p.Telemetry.Registry, log, nil); err != nil {
			log.Error("metrics listener", "err", err)
		}
	}()
	log.Info("host agent listening", "addr", ln.Addr().String(), "dir", cfg.Dir, "mtls", p.Certs.Loaded())
	if opts.Listening != nil {
		opts.Listening(ln.Addr())
	}
	return serveRegistered(ctx, p, ln, hb, log)
}

// pauseOnExit pauses every running sandbox on a fresh context: the agent's
// own context is already cancelled when it stops.
func pauseOnExit(p *Parts, log *slog.Logger) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	res := p.Manager.PauseAll(ctx, 2)
	if n := len(res.GetPausedSandboxIds()); n > 0 {
		log.Info("paused sandboxes on exit", "count", n)
	}
	for id, msg := range res.GetFailed() {
		log.Error("pause on exit failed; destroying the sandbox", "sandbox", id, "err", msg)
		if err := p.Manager.Destroy(ctx, id); err != nil {
			log.Error("destroy on exit", "sandbox", id, "err", err)
		}
	}
}
