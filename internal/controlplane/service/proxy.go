package service

import (
	"context"
	"slices"

	"github.com/wrenn-dev/wrenn/internal/controlplane/auth"
	"github.com/wrenn-dev/wrenn/internal/controlplane/ids"
	"github.com/wrenn-dev/wrenn/internal/db"
	"github.com/wrenn-dev/wrenn/internal/envdwire"
)

// EnvdPort is the guest agent's port. The sandbox HTTP proxy never reaches
// it for users: only the E2B-compatible layer does, after its own checks.
const EnvdPort = envdwire.Port

// maxPublicPorts bounds public_ports (the migration's CHECK holds it too).
const maxPublicPorts = 16

// CheckProxyPort is the one rule for which guest ports the sandbox HTTP
// proxy reaches: a TCP port, not envd's.
func CheckProxyPort(port int) error {
	if port < 1 || port > 65535 {
		return Errorf(CodePortNotAllowed, "port %d is not a TCP port (1-65535)", port)
	}
	if port == EnvdPort {
		return Errorf(CodePortNotAllowed, "port %d is the sandbox agent's own and is not reachable through the proxy", port)
	}
	return nil
}

// checkPublicPorts validates a public_ports list and returns it without
// duplicates, sorted.
func checkPublicPorts(field string, ports []int) ([]int, error) {
	if len(ports) > maxPublicPorts {
		return nil, Invalid(field, "%s may list at most %d ports", field, maxPublicPorts)
	}
	for _, p := range ports {
		if err := CheckProxyPort(p); err != nil {
			return nil, Invalid(field, "%s: %s", field, err.(*Error).Message)
		}
	}
	out := slices.Clone(ports)
	slices.Sort(out)
	return slices.Compact(out), nil
}

func ports32(ports []int) []int32 {
	out := make([]int32, 0, len(ports))
	for _, p := range ports {
		if !slices.Contains(out, int32(p)) {
			out = append(out, int32(p))
		}
	}
	slices.Sort(out)
	return out
}

func publicPorts(p []int32) []int32 {
	if p == nil {
		return []int32{}
	}
	return p
}

// ProxyTarget is what the sandbox HTTP proxy needs of a sandbox: its row
// (team, status, proxy options) and, while it has one, its host's row.
type ProxyTarget struct {
	Sandbox db.Sandbox
	Host    *db.Host
}

// LookupProxyTarget loads sandbox id for the proxy, whoever's it is: the
// proxy checks the caller's team itself (and answers another team's 404).
func (s *Service) LookupProxyTarget(ctx context.Context, id string) (ProxyTarget, error) {
	if !ids.Valid(ids.Sandbox, id) {
		return ProxyTarget{}, errSandboxNotFound
	}
	r, err := s.q.GetSandboxByID(ctx, id)
	if isNoRows(err) {
		return ProxyTarget{}, errSandboxNotFound
	}
	if err != nil {
		return ProxyTarget{}, Internal("load sandbox", err)
	}
	t := ProxyTarget{Sandbox: r}
	if r.HostID == nil {
		return t, nil
	}
	h, err := s.q.GetHost(ctx, *r.HostID)
	if isNoRows(err) {
		return t, nil
	}
	if err != nil {
		return ProxyTarget{}, Internal("load host", err)
	}
	t.Host = &h
	return t, nil
}

// AutoResume resumes team's paused sandbox id because traffic reached it
// and it has auto_resume set; the audit trail names the auto-resume actor.
func (s *Service) AutoResume(ctx context.Context, teamID, id string) (Sandbox, error) {
	r, err := s.loadSandbox(ctx, auth.AuthContext{TeamID: teamID}, id)
	if err != nil {
		return Sandbox{}, err
	}
	if !r.AutoResume {
		return Sandbox{}, Errorf(CodeSandboxPaused, "sandbox %s is paused and does not resume on traffic (auto_resume is off)", id)
	}
	return s.resume(ctx, auth.AuthContext{TeamID: teamID}, ActorAutoResume, id, ResumeInput{})
}

// UpdateSandboxInput is PATCH /v1/sandboxes/{id}: the proxy options
// (absent fields keep their value).
type UpdateSandboxInput struct {
	PublicPorts *[]int `json:"public_ports"`
	AutoResume  *bool  `json:"auto_resume"`
}

// UpdateSandbox changes a live sandbox's proxy options.
func (s *Service) UpdateSandbox(ctx context.Context, a auth.AuthContext, id string, in UpdateSandboxInput) (Sandbox, error) {
	var ports []int32
	if in.PublicPorts != nil {
		checked, err := checkPublicPorts("public_ports", *in.PublicPorts)
		if err != nil {
			return Sandbox{}, err
		}
		ports = ports32(checked)
	}
	r, err := s.loadSandbox(ctx, a, id)
	if err != nil {
		return Sandbox{}, err
	}
	if !slices.Contains(LiveStatuses(), Status(r.Status)) {
		return Sandbox{}, wrongState(r, StatusRunning, StatusPaused)
	}
	row, err := s.q.SetSandboxProxyOptions(ctx, db.SetSandboxProxyOptionsParams{ID: id, TeamID: a.TeamID, PublicPorts: ports, AutoResume: in.AutoResume})
	if isNoRows(err) {
		return Sandbox{}, errSandboxNotFound
	}
	if err != nil {
		return Sandbox{}, Internal("update sandbox", err)
	}
	if s.states != nil {
		st := Status(row.Status)
		s.states.notify(Transition{SandboxID: row.ID, TeamID: row.TeamID, HostID: row.HostID, From: st, To: st,
			Actor: ActorOf(a), Reason: "proxy options changed", At: row.UpdatedAt, Sandbox: row})
	}
	return toSandbox(row), nil
}
