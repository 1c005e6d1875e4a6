// Package agentstub is a real Connect host agent server, served on
// loopback, that keeps an in-memory sandbox list instead of booting VMs. It
// lets control plane tests drive the host monitor, forced deletes and the
// schedulers over real RPCs without QEMU.
package agentstub

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"slices"
	"sync"

	"connectrpc.com/connect"

	pb "github.com/wrenn-dev/wrenn/proto/hostagent/v1"
	"github.com/wrenn-dev/wrenn/proto/hostagent/v1/hostagentv1connect"
)

// Agent is the stub's state.
type Agent struct {
	hostagentv1connect.UnimplementedHostAgentServiceHandler

	mu        sync.Mutex
	sandboxes map[string]pb.SandboxState
	destroyed []string
	srv       *http.Server
	ln        net.Listener
}

// Start serves the stub on 127.0.0.1 on a free port until Close.
func Start() (*Agent, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("listen: %w", err)
	}
	a := &Agent{sandboxes: map[string]pb.SandboxState{}, ln: ln}
	mux := http.NewServeMux()
	mux.Handle(hostagentv1connect.NewHostAgentServiceHandler(a))
	a.srv = &http.Server{Handler: mux}
	go func() { _ = a.srv.Serve(ln) }()
	return a, nil
}

// Addr is the host:port the stub listens on.
func (a *Agent) Addr() string { return a.ln.Addr().String() }

// Close stops the server.
func (a *Agent) Close() error { return a.srv.Close() }

// Put sets a sandbox's state, adding it when absent.
func (a *Agent) Put(id string, st pb.SandboxState) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.sandboxes[id] = st
}

// Remove forgets a sandbox without recording a destroy.
func (a *Agent) Remove(id string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	delete(a.sandboxes, id)
}

// Has reports whether the stub holds the sandbox.
func (a *Agent) Has(id string) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	_, ok := a.sandboxes[id]
	return ok
}

// Destroyed lists the sandboxes destroyed through RPCs, sorted.
func (a *Agent) Destroyed() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := slices.Clone(a.destroyed)
	slices.Sort(out)
	return out
}

// CreateSandbox records a running sandbox.
func (a *Agent) CreateSandbox(_ context.Context, req *connect.Request[pb.CreateSandboxRequest]) (*connect.Response[pb.CreateSandboxResponse], error) {
	id := req.Msg.GetSandboxId()
	if id == "" {
		return nil, connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("sandbox_id is required"))
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if _, ok := a.sandboxes[id]; ok {
		return nil, connect.NewError(connect.CodeAlreadyExists, fmt.Errorf("sandbox %s exists", id))
	}
	a.sandboxes[id] = pb.SandboxState_SANDBOX_STATE_RUNNING
	return connect.NewResponse(&pb.CreateSandboxResponse{Sandbox: &pb.SandboxInfo{
		SandboxId: id, State: pb.SandboxState_SANDBOX_STATE_RUNNING, Template: req.Msg.GetTemplate()}}), nil
}

// DestroySandbox forgets a sandbox; NotFound when absent, like the agent.
func (a *Agent) DestroySandbox(_ context.Context, req *connect.Request[pb.DestroySandboxRequest]) (*connect.Response[pb.DestroySandboxResponse], error) {
	id := req.Msg.GetSandboxId()
	a.mu.Lock()
	defer a.mu.Unlock()
	if _, ok := a.sandboxes[id]; !ok {
		return nil, connect.NewError(connect.CodeNotFound, fmt.Errorf("sandbox %s not found", id))
	}
	delete(a.sandboxes, id)
	a.destroyed = append(a.destroyed, id)
	return connect.NewResponse(&pb.DestroySandboxResponse{}), nil
}

// ListSandboxes returns the in-memory list.
func (a *Agent) ListSandboxes(context.Context, *connect.Request[pb.ListSandboxesRequest]) (*connect.Response[pb.ListSandboxesResponse], error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	resp := &pb.ListSandboxesResponse{}
	for id, st := range a.sandboxes {
		resp.Sandboxes = append(resp.Sandboxes, &pb.SandboxInfo{SandboxId: id, State: st})
		if st == pb.SandboxState_SANDBOX_STATE_AUTO_PAUSED {
			resp.AutoPausedSandboxIds = append(resp.AutoPausedSandboxIds, id)
		}
	}
	return connect.NewResponse(resp), nil
}

// PauseAll pauses every running sandbox.
func (a *Agent) PauseAll(context.Context, *connect.Request[pb.PauseAllRequest]) (*connect.Response[pb.PauseAllResponse], error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for id, st := range a.sandboxes {
		if st == pb.SandboxState_SANDBOX_STATE_RUNNING {
			a.sandboxes[id] = pb.SandboxState_SANDBOX_STATE_PAUSED
		}
	}
	return connect.NewResponse(&pb.PauseAllResponse{}), nil
}
