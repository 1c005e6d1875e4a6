package agentapp

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"

	"connectrpc.com/connect"

	"github.com/wrenn-dev/wrenn/internal/agent/registration"
	"github.com/wrenn-dev/wrenn/internal/config"
	"github.com/wrenn-dev/wrenn/internal/hostreport"
	"github.com/wrenn-dev/wrenn/internal/pki"
	pb "github.com/wrenn-dev/wrenn/proto/hostagent/v1"
)

// prepareRegistration readies the agent's part with a control plane when
// it belongs to one (a registration token, a control plane URL, or saved
// credentials): registered or loaded credentials, and in mTLS mode the
// host certificate checked and installed in p.Certs. Nil: standalone.
func prepareRegistration(ctx context.Context, cfg config.Agent, p *Parts, log *slog.Logger) (*registration.Heartbeater, error) {
	reg := cfg.Registration
	return registration.Prepare(ctx, registration.Options{
		Dir: cfg.Dir, CPURLs: reg.CPURLs, RegisterToken: reg.Token, Address: reg.Address,
		Specs:    hostSpecs(ctx, p),
		Report:   func(ctx context.Context) registration.Resources { return hostSpecs(ctx, p).Resources },
		Interval: reg.HeartbeatInterval, UnreachableAfter: reg.PauseAfter, Contact: p.Contact,
		PauseAll: func(ctx context.Context) error {
			res := p.Manager.PauseAll(ctx, 2)
			if n := len(res.GetFailed()); n > 0 {
				return fmt.Errorf("%d sandboxes did not pause", n)
			}
			return nil
		},
		Logger: log,
		Certs:  p.Certs,
	})
}

// belongsToControlPlane: the agent has a registration token, a control
// plane URL or saved credentials; else it runs standalone.
func belongsToControlPlane(cfg config.Agent) bool {
	reg := cfg.Registration
	if reg.Token != "" || len(reg.CPURLs) > 0 {
		return true
	}
	_, err := os.Stat(registration.CredentialsPath(cfg.Dir))
	return err == nil
}

// listenRegistered opens the agent's port, then registers (register is nil
// for a standalone agent), then readies the port for the mode registration
// revealed. The control plane marks the host online, and may send it a
// create, the moment it registers: the port is bound by then, so such a
// call waits in the listen backlog until the agent serves instead of being
// refused. Nothing is accepted before registration has installed the host
// certificate, so no handshake can happen without it. The listener is nil,
// with no error, when ctx ended during registration.
func listenRegistered(ctx context.Context, cfg config.Agent, certs *pki.HostCertStore, register func(context.Context) error, log *slog.Logger) (net.Listener, error) {
	if register == nil {
		return listenPlain(cfg, nil, log) // standalone: plain HTTP, known now
	}
	// A registered agent serves mutual TLS on the configured address; only
	// a control plane without a CA makes it plain, and so loopback-bound.
	ln, err := net.Listen("tcp", cfg.ListenAddr)
	if err != nil {
		return nil, fmt.Errorf("WRENN_AGENT_LISTEN_ADDR: listen on %s: %w", cfg.ListenAddr, err)
	}
	if err := register(ctx); err != nil {
		ln.Close()
		return nil, fmt.Errorf("control plane registration: %w", err)
	}
	if ctx.Err() != nil {
		ln.Close()
		return nil, nil
	}
	if !certs.Loaded() {
		return listenPlain(cfg, ln, log)
	}
	// tls.NewListener, as tls.Listen: every handshake reads the store, so a
	// renewed certificate needs no restart.
	log.Info("serving mutual TLS: only the control plane's client certificate is accepted", "cert_expires_at", certs.Leaf().NotAfter)
	return tls.NewListener(ln, certs.ServerConfig(nil)), nil
}

// listenPlain serves plain HTTP on loopback (unless insecure): on bound
// when it already listens there, else on a new listener (bound, when set,
// is closed first: a wildcard port registered with a control plane without
// a CA moves to loopback, the one case a call can still find it closed).
func listenPlain(cfg config.Agent, bound net.Listener, log *slog.Logger) (net.Listener, error) {
	addr, err := plainListenAddr(cfg.ListenAddr, cfg.InsecureListen)
	if err != nil {
		if bound != nil {
			bound.Close()
		}
		return nil, err
	}
	ln := bound
	if addr != cfg.ListenAddr || ln == nil {
		if bound != nil {
			bound.Close()
		}
		if ln, err = net.Listen("tcp", addr); err != nil {
			return nil, fmt.Errorf("WRENN_AGENT_LISTEN_ADDR: listen on %s: %w", addr, err)
		}
	}
	log.Warn("no mTLS (standalone, or the control plane has no CA): plain HTTP without authentication, for development only", "addr", ln.Addr().String())
	return ln, nil
}

// plainListenAddr keeps an agent without mTLS to loopback: a wildcard
// address becomes loopback, another address is refused, unless insecure.
func plainListenAddr(addr string, insecure bool) (string, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil || insecure {
		return addr, err
	}
	ip := net.ParseIP(host)
	switch {
	case host == "" || (ip != nil && ip.IsUnspecified() && ip.To4() != nil):
		return net.JoinHostPort("127.0.0.1", port), nil
	case ip != nil && ip.IsUnspecified():
		return net.JoinHostPort("::1", port), nil
	case host == "localhost" || (ip != nil && ip.IsLoopback()):
		return addr, nil
	}
	return "", fmt.Errorf("WRENN_AGENT_LISTEN_ADDR: %s is not a loopback address, and without mTLS the agent listens on loopback only (give the control plane a CA, or set WRENN_AGENT_INSECURE_LISTEN=true)", addr)
}

// serveRegistered serves the agent and, when it belongs to a control plane
// (hb not nil), runs heartbeats beside it. The agent stops cleanly when
// the control plane deletes its host, and with an error when its
// credentials are refused (after pausing every sandbox).
func serveRegistered(ctx context.Context, p *Parts, ln net.Listener, hb *registration.Heartbeater, log *slog.Logger) error {
	if hb == nil {
		return p.Server.Serve(ctx, ln)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	regErr := make(chan error, 1)
	go func() { regErr <- hb.Run(ctx) }()
	serveErr := make(chan error, 1)
	go func() { serveErr <- p.Server.Serve(ctx, ln) }()
	select {
	case err := <-serveErr:
		cancel()
		<-regErr
		return err
	case err := <-regErr:
		cancel()
		serr := <-serveErr
		switch {
		case err == nil:
			return serr // ctx ended
		case errors.Is(err, registration.ErrHostDeleted):
			log.Warn("host deleted by the control plane; agent stopping")
			return serr
		default:
			return fmt.Errorf("control plane registration: %w", err)
		}
	}
}

// hostSpecs describes this machine with the agent's own host info.
func hostSpecs(ctx context.Context, p *Parts) registration.Specs {
	resp, err := p.Server.GetHostInfo(ctx, connect.NewRequest(&pb.GetHostInfoRequest{}))
	if err != nil {
		return registration.Specs{}
	}
	in := resp.Msg
	lim, c := in.GetLimits(), in.GetCapacity()
	return registration.Specs{VMM: in.GetVmm(), Accel: in.GetAccel(), Arch: in.GetArch(), Version: in.GetVersion(),
		CPUCount: int32(in.GetCpuCount()), MemoryMB: int64(in.GetMemoryBytes() >> 20), DiskGB: int64(in.GetDiskFreeBytes() >> 30),
		Resources: registration.Resources{
			Limits: hostreport.Limits{MaxVCPUs: int32(lim.GetMaxVcpus()), MaxMemoryMB: int32(lim.GetMaxMemoryMb()), MaxDiskMB: int32(lim.GetMaxDiskMb())},
			Capacity: hostreport.Capacity{VCPUs: int32(c.GetVcpus()), MemoryMB: int64(c.GetMemoryMb()),
				CommittedVCPUs: int32(c.GetCommittedVcpus()), CommittedMemoryMB: int64(c.GetCommittedMemoryMb())},
		}}
}
