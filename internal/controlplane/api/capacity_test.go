package api

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"

	"connectrpc.com/connect"

	"github.com/wrenn-dev/wrenn/internal/controlplane/agenttest"
	"github.com/wrenn-dev/wrenn/internal/db"
	pb "github.com/wrenn-dev/wrenn/proto/hostagent/v1"
)

// capacityEnv is the test control plane with its one shared host reporting
// the limits its in-memory agent enforces (the real agent's defaults: 4
// vCPUs, 4096 MiB, 20480 MiB disk) and the given capacity, as its heartbeat
// would; agentOpts configure the agent before it starts.
func capacityEnv(t *testing.T, capVCPUs int32, capMemMB int64, agentOpts ...func(*agenttest.Agent)) *env {
	t.Helper()
	e := newEnv(t, func(o *envOpts) {
		o.limits.MaxRunningPerTeam, o.limits.MaxVCPUs, o.limits.MaxMemoryMB = 50, 64, 65536
		o.agent = func(a *agenttest.Agent) {
			for _, f := range agentOpts {
				f(a)
			}
		}
	})
	hi, err := e.agent.GetHostInfo(context.Background(), connect.NewRequest(&pb.GetHostInfoRequest{}))
	if err != nil {
		t.Fatal(err)
	}
	lim := hi.Msg.GetLimits()
	if lim.GetMaxVcpus() != 4 || lim.GetMaxMemoryMb() != 4096 {
		t.Fatalf("the in-memory agent reports %v; these tests assume the real agent's defaults", lim)
	}
	maxV, maxM, maxD := int32(lim.MaxVcpus), int32(lim.MaxMemoryMb), int32(lim.MaxDiskMb)
	if _, err := e.q.HeartbeatHost(context.Background(), db.HeartbeatHostParams{ID: "host-test", MaxVcpus: &maxV, MaxMemoryMb: &maxM, MaxDiskMb: &maxD,
		CapacityVcpus: &capVCPUs, CapacityMemoryMb: &capMemMB}); err != nil {
		t.Fatal(err)
	}
	return e
}

func (e *env) teamSandboxRows(teamID string) int {
	e.t.Helper()
	var n int
	if err := e.pool.QueryRow(context.Background(), `SELECT count(*) FROM sandboxes WHERE team_id = $1`, teamID).Scan(&n); err != nil {
		e.t.Fatal(err)
	}
	return n
}

// TestCreateOverHostLimits: a size no online host accepts answers 400
// naming the field and the host's limit, and leaves no row (before, the
// control plane accepted it and the agent's refusal left an error row).
func TestCreateOverHostLimits(t *testing.T) {
	e := capacityEnv(t, 8, 24576)
	owner := e.signup("limits@example.com")
	cases := []struct {
		name  string
		body  map[string]any
		field string
		msg   string
	}{
		{"16 vcpus on a 4-vcpu host", map[string]any{"vcpus": 16}, "vcpus", "at most 4"},
		{"8 vcpus the old check let through", map[string]any{"vcpus": 8}, "vcpus", "at most 4"},
		{"8192 MiB on a 4096 MiB host", map[string]any{"memory_mb": 8192}, "memory_mb", "at most 4096"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var ae apiErr
			e.want("POST", "/v1/sandboxes", c.body, owner.cred(), http.StatusBadRequest, &ae)
			if ae.Error.Code != "invalid_request" || ae.Error.Field != c.field || !strings.Contains(ae.Error.Message, c.msg) {
				t.Fatalf("error = %+v; want invalid_request on %s saying %q", ae.Error, c.field, c.msg)
			}
			if n := e.teamSandboxRows(owner.Team.ID); n != 0 {
				t.Fatalf("%d sandbox rows after a refused create; want none", n)
			}
		})
	}
	if n := e.agent.Calls("CreateSandbox"); n != 0 {
		t.Fatalf("the agent was asked %d times; want never", n)
	}
	// At the limits the host accepts it.
	sb := e.createSandbox(owner.cred(), map[string]any{"vcpus": 4, "memory_mb": 4096})
	if sb.Status != "running" {
		t.Fatalf("at the limits: %+v", sb)
	}
}

// TestCreatePastCapacity: 20 x 4 GiB on a 24 GiB host: six run, the
// seventh gets 503 no_capacity naming memory and leaves no row; destroying
// or pausing one makes room, and a resume needs room again.
func TestCreatePastCapacity(t *testing.T) {
	e := capacityEnv(t, 64, 24576)
	owner := e.signup("capacity@example.com")
	c := owner.cred()
	big := map[string]any{"memory_mb": 4096}
	var ids []string
	for range 6 {
		ids = append(ids, e.createSandbox(c, big).ID)
	}
	for range 14 {
		var ae apiErr
		e.want("POST", "/v1/sandboxes", big, c, http.StatusServiceUnavailable, &ae)
		if ae.Error.Code != "no_capacity" || !strings.Contains(ae.Error.Message, "memory") {
			t.Fatalf("7th create: %+v; want no_capacity naming memory", ae.Error)
		}
	}
	if n := e.teamSandboxRows(owner.Team.ID); n != 6 {
		t.Fatalf("%d rows; want the 6 that run", n)
	}
	e.want("DELETE", "/v1/sandboxes/"+ids[0], nil, c, http.StatusNoContent, nil)
	ids[0] = e.createSandbox(c, big).ID
	// A paused sandbox holds no host memory...
	e.want("POST", "/v1/sandboxes/"+ids[1]+"/pause", nil, c, http.StatusOK, nil)
	e.createSandbox(c, big)
	// ...so it cannot resume while the host is full.
	e.wantErr("POST", "/v1/sandboxes/"+ids[1]+"/resume", nil, c, http.StatusServiceUnavailable, "no_capacity", "")
	e.want("DELETE", "/v1/sandboxes/"+ids[2], nil, c, http.StatusNoContent, nil)
	e.want("POST", "/v1/sandboxes/"+ids[1]+"/resume", nil, c, http.StatusOK, nil)
}

// TestConcurrentCreatesAtCapacity: creates from many teams at once (so the
// per-team lock does not serialise them) admit exactly what fits.
func TestConcurrentCreatesAtCapacity(t *testing.T) {
	e := capacityEnv(t, 64, 24576)
	const teams = 12
	var creds []cred
	for i := range teams {
		creds = append(creds, e.signup(fmt.Sprintf("race%d@example.com", i)).cred())
	}
	statuses := make([]int, teams)
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i, c := range creds {
		wg.Go(func() {
			<-start
			st, body := e.do("POST", "/v1/sandboxes", map[string]any{"memory_mb": 4096}, c)
			if st == http.StatusServiceUnavailable {
				var ae apiErr
				if json.Unmarshal(body, &ae) != nil || ae.Error.Code != "no_capacity" {
					t.Errorf("503 body %s; want no_capacity", body)
				}
			}
			statuses[i] = st
		})
	}
	close(start)
	wg.Wait()
	count := map[int]int{}
	for _, st := range statuses {
		count[st]++
	}
	if count[http.StatusCreated] != 6 || count[http.StatusServiceUnavailable] != teams-6 {
		t.Fatalf("statuses = %v; want 6 created and %d no_capacity", count, teams-6)
	}
	var held int64
	if err := e.pool.QueryRow(context.Background(), `SELECT coalesce(sum(memory_mb), 0) FROM sandboxes WHERE host_id = 'host-test' AND status = 'running'`).Scan(&held); err != nil {
		t.Fatal(err)
	}
	if held != 24576 {
		t.Fatalf("running sandboxes hold %d MiB; want exactly the 24576 the host has", held)
	}
}

// TestResumeHoldsItsRoom: while a paused sandbox resumes, its room on the
// host is reserved: a create arriving during the agent's resume finds the
// host full instead of taking the room the resume needs.
func TestResumeHoldsItsRoom(t *testing.T) {
	var (
		e          *env
		c          cred
		duringCode string
		duringOK   bool
	)
	e = capacityEnv(t, 64, 8192, func(a *agenttest.Agent) {
		a.BeforeResume = func(string) {
			st, body := e.do("POST", "/v1/sandboxes", map[string]any{"memory_mb": 4096}, c)
			var ae apiErr
			_ = json.Unmarshal(body, &ae)
			duringOK, duringCode = st == http.StatusCreated, ae.Error.Code
		}
	})
	c = e.signup("resume@example.com").cred()
	big := map[string]any{"memory_mb": 4096}
	a := e.createSandbox(c, big)
	e.createSandbox(c, big)
	e.want("POST", "/v1/sandboxes/"+a.ID+"/pause", nil, c, http.StatusOK, nil)
	e.want("POST", "/v1/sandboxes/"+a.ID+"/resume", nil, c, http.StatusOK, nil)
	if duringOK || duringCode != "no_capacity" {
		t.Fatalf("create during the resume: created=%v code=%q; want 503 no_capacity", duringOK, duringCode)
	}
	// The reservation ends with the resume: a paused sandbox holds nothing again.
	var reserved int
	if err := e.pool.QueryRow(context.Background(), `SELECT count(*) FROM sandboxes WHERE resume_reserved_until IS NOT NULL`).Scan(&reserved); err != nil {
		t.Fatal(err)
	}
	if reserved != 0 {
		t.Fatalf("%d reservations left after the resume", reserved)
	}
	e.want("POST", "/v1/sandboxes/"+a.ID+"/pause", nil, c, http.StatusOK, nil)
	e.createSandbox(c, big)
}
