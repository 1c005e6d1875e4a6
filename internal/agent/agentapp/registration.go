package agentapp

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"

	"connectrpc.com/connect"

	"github.com/wrenn-dev/wrenn/internal/agent/registration"
	"github.com/wrenn-dev/wrenn/internal/config"
	"github.com/wrenn-dev/wrenn/internal/hostreport"
	pb "github.com/wrenn-dev/wrenn/proto/hostagent/v1"
)

// serveRegistered serves the agent and, when it belongs to a control plane
// (a registration token, a control plane URL, or saved credentials), runs
// registration and heartbeats beside it. The agent stops cleanly when the
// control plane deletes its host, and with an error when its credentials
// are refused (after pausing every sandbox) or registration fails.
func serveRegistered(ctx context.Context, cfg config.Agent, p *Parts, ln net.Listener, log *slog.Logger) error {
	reg := cfg.Registration
	if reg.Token == "" && len(reg.CPURLs) == 0 {
		if _, err := os.Stat(registration.CredentialsPath(cfg.Dir)); err != nil {
			return p.Server.Serve(ctx, ln) // standalone
		}
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	regErr := make(chan error, 1)
	go func() {
		regErr <- registration.Run(ctx, registration.Options{
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
		})
	}()
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
