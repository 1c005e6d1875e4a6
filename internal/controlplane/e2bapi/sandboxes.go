package e2bapi

import (
	"context"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/wrenn-dev/wrenn/internal/controlplane/api"
	"github.com/wrenn-dev/wrenn/internal/controlplane/auth"
	"github.com/wrenn-dev/wrenn/internal/controlplane/service"
	"github.com/wrenn-dev/wrenn/internal/envdwire"
)

// defaultTimeoutSec is the lifetime of a sandbox created or resumed without
// a timeout: the SDKs' own default (5 minutes).
const defaultTimeoutSec = 300

// newSandbox is POST /sandboxes (SDK <= 2.45) and /v2/sandboxes; fields
// the SDK sends that Wrenn has no use for (mcp, network, volumeMounts...)
// are ignored. secure is always on: every sandbox's envd takes a token.
type newSandbox struct {
	TemplateID          string            `json:"templateID"`
	Timeout             *int              `json:"timeout"`
	AutoPause           bool              `json:"autoPause"`
	Metadata            map[string]string `json:"metadata"`
	EnvVars             map[string]string `json:"envVars"`
	AllowInternetAccess *bool             `json:"allow_internet_access"`
}

// sandboxRef is E2B's Sandbox: what the SDK needs to reach a sandbox.
type sandboxRef struct {
	TemplateID      string  `json:"templateID"`
	SandboxID       string  `json:"sandboxID"`
	Alias           string  `json:"alias,omitempty"`
	ClientID        string  `json:"clientID"`
	EnvdVersion     string  `json:"envdVersion"`
	EnvdAccessToken string  `json:"envdAccessToken"`
	Domain          *string `json:"domain"`
}

// lifecycle is E2B's SandboxLifecycle.
type lifecycle struct {
	OnTimeout  string `json:"onTimeout"`
	AutoResume bool   `json:"autoResume"`
}

// sandboxDetail is E2B's SandboxDetail (GET /sandboxes/{id}); listed
// sandboxes (ListedSandbox) are the same without the token and domain.
type sandboxDetail struct {
	TemplateID      string            `json:"templateID"`
	SandboxID       string            `json:"sandboxID"`
	Alias           string            `json:"alias,omitempty"`
	ClientID        string            `json:"clientID"`
	StartedAt       time.Time         `json:"startedAt"`
	EndAt           *time.Time        `json:"endAt"`
	State           string            `json:"state"`
	CPUCount        int32             `json:"cpuCount"`
	MemoryMB        int32             `json:"memoryMB"`
	DiskSizeMB      int32             `json:"diskSizeMB"`
	EnvdVersion     string            `json:"envdVersion"`
	Metadata        map[string]string `json:"metadata"`
	EnvdAccessToken string            `json:"envdAccessToken,omitempty"`
	Domain          *string           `json:"domain,omitempty"`
	Lifecycle       *lifecycle        `json:"lifecycle,omitempty"`
}

// E2B's sandbox states; every other Wrenn status is a sandbox E2B's API
// no longer knows (404).
const (
	stateRunning = "running"
	statePaused  = "paused"
)

// stateOf is sb's E2B state, "" when E2B's API does not show it.
func stateOf(sb service.Sandbox) string {
	switch sb.Status {
	case service.StatusPending, service.StatusRunning:
		return stateRunning
	case service.StatusPaused:
		return statePaused
	}
	return ""
}

// domain is the sandboxes' domain for a request to the control plane.
func (s *Server) domain(r *http.Request) *string {
	if s.deps.Names == nil {
		return nil
	}
	_, port, _ := net.SplitHostPort(r.Host)
	d := s.deps.Names.SDKDomain(port)
	return &d
}

// clientID is E2B's legacy field naming the machine; Wrenn's host.
func clientID(sb service.Sandbox) string {
	if sb.HostID != nil {
		return *sb.HostID
	}
	return ""
}

func (s *Server) ref(r *http.Request, sb service.Sandbox) sandboxRef {
	return sandboxRef{TemplateID: sb.Template, SandboxID: sb.ID, Alias: sb.Template, ClientID: clientID(sb),
		EnvdVersion: envdwire.E2BVersion, EnvdAccessToken: sb.EnvdAccessToken, Domain: s.domain(r)}
}

func listed(sb service.Sandbox) sandboxDetail {
	started := sb.CreatedAt
	if sb.StartedAt != nil {
		started = *sb.StartedAt
	}
	return sandboxDetail{TemplateID: sb.Template, SandboxID: sb.ID, Alias: sb.Template, ClientID: clientID(sb),
		StartedAt: started, EndAt: sb.EndAt, State: stateOf(sb), CPUCount: sb.VCPUs, MemoryMB: sb.MemoryMB,
		DiskSizeMB: sb.DiskMB, EnvdVersion: envdwire.E2BVersion, Metadata: sb.Metadata}
}

func (s *Server) detail(r *http.Request, sb service.Sandbox) sandboxDetail {
	d := listed(sb)
	d.EnvdAccessToken, d.Domain = sb.EnvdAccessToken, s.domain(r)
	d.Lifecycle = &lifecycle{OnTimeout: "kill"}
	if sb.PauseAtEnd {
		d.Lifecycle.OnTimeout = "pause"
	}
	return d
}

func sandboxID(r *http.Request) string { return chi.URLParam(r, "sandboxID") }

// live loads a sandbox E2B's API shows (running or paused); a stopped or
// failed one is not found, as a killed or expired sandbox is in E2B.
func (s *Server) live(ctx context.Context, a auth.AuthContext, id string) (service.Sandbox, error) {
	sb, err := s.deps.Service.GetSandbox(ctx, a, id)
	if err != nil {
		return sb, err
	}
	if stateOf(sb) == "" {
		return sb, service.NotFound(service.CodeSandboxNotFound, "sandbox "+id+" not found")
	}
	return sb, nil
}

func (s *Server) create(w http.ResponseWriter, r *http.Request) {
	var in newSandbox
	if err := api.DecodeLenient(r, &in); err != nil {
		s.writeErr(w, r, err)
		return
	}
	if in.TemplateID == "" {
		s.writeErr(w, r, service.Invalid("templateID", "templateID is required"))
		return
	}
	life := &service.Lifetime{Seconds: defaultTimeoutSec, PauseAtEnd: in.AutoPause}
	if in.Timeout != nil {
		life.Seconds = *in.Timeout
	}
	sb, err := s.deps.Service.CreateSandbox(r.Context(), caller(r), service.CreateSandboxInput{
		Template: in.TemplateID, Metadata: in.Metadata, EnvVars: in.EnvVars, InternetAccess: in.AllowInternetAccess, Lifetime: life})
	if err != nil {
		s.writeErr(w, r, err)
		return
	}
	api.WriteJSON(w, http.StatusCreated, s.ref(r, sb))
}

func (s *Server) get(w http.ResponseWriter, r *http.Request) {
	sb, err := s.live(r.Context(), caller(r), sandboxID(r))
	if err != nil {
		s.writeErr(w, r, err)
		return
	}
	api.WriteJSON(w, http.StatusOK, s.detail(r, sb))
}

// listRunning is GET /sandboxes (the v1 list): running sandboxes only.
func (s *Server) listRunning(w http.ResponseWriter, r *http.Request) {
	s.listStates(w, r, []string{stateRunning})
}

// list is GET /v2/sandboxes: running and paused ones unless state says.
func (s *Server) list(w http.ResponseWriter, r *http.Request) {
	s.listStates(w, r, []string{stateRunning, statePaused})
}

// listStates pages through the team's sandboxes: ?metadata= (an encoded
// query string of key=value pairs, all of which must match), ?state=
// (comma-separated), ?limit=, ?nextToken= (the X-Next-Token of the
// previous page).
func (s *Server) listStates(w http.ResponseWriter, r *http.Request, states []string) {
	q := r.URL.Query()
	in := service.ListSandboxesInput{Cursor: q.Get("nextToken")}
	if v := q.Get("state"); v != "" {
		states = strings.Split(v, ",")
	}
	for _, st := range states {
		switch strings.TrimSpace(st) {
		case stateRunning:
			in.Statuses = append(in.Statuses, service.StatusPending, service.StatusRunning)
		case statePaused:
			in.Statuses = append(in.Statuses, service.StatusPaused)
		default:
			s.writeErr(w, r, service.Invalid("state", "state must be running or paused, not %q", st))
			return
		}
	}
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > service.MaxPageSize {
			s.writeErr(w, r, service.Invalid("limit", "limit must be between 1 and %d", service.MaxPageSize))
			return
		}
		in.Limit = n
	}
	md, err := metadataFilter(q.Get("metadata"))
	if err != nil {
		s.writeErr(w, r, err)
		return
	}
	in.Metadata = md
	page, err := s.deps.Service.ListSandboxes(r.Context(), caller(r), in)
	if err != nil {
		s.writeErr(w, r, err)
		return
	}
	out := make([]sandboxDetail, 0, len(page.Sandboxes))
	for _, sb := range page.Sandboxes {
		out = append(out, listed(sb))
	}
	if page.NextCursor != "" {
		w.Header().Set("X-Next-Token", page.NextCursor)
	}
	api.WriteJSON(w, http.StatusOK, out)
}

// metadataFilter reads the SDK's metadata filter: a query string whose keys
// and values are themselves percent-encoded once more.
func metadataFilter(v string) (map[string]string, error) {
	if v == "" {
		return nil, nil
	}
	pairs, err := url.ParseQuery(v)
	if err != nil {
		return nil, service.Invalid("metadata", "metadata must be key=value pairs joined by &")
	}
	md := make(map[string]string, len(pairs))
	for k, vs := range pairs {
		key, kerr := url.QueryUnescape(k)
		val, verr := url.QueryUnescape(vs[0])
		if kerr != nil || verr != nil {
			return nil, service.Invalid("metadata", "metadata keys and values must be percent-encoded")
		}
		md[key] = val
	}
	return md, nil
}

func (s *Server) kill(w http.ResponseWriter, r *http.Request) {
	a := caller(r)
	if _, err := s.live(r.Context(), a, sandboxID(r)); err != nil {
		s.writeErr(w, r, err)
		return
	}
	if _, err := s.deps.Service.DestroySandbox(r.Context(), a, sandboxID(r)); err != nil {
		s.writeErr(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// timeoutBody is POST /sandboxes/{id}/timeout, and the body of connect
// and resume (seconds).
type timeoutBody struct {
	Timeout *int `json:"timeout"`
}

func (b timeoutBody) seconds() int {
	if b.Timeout == nil {
		return defaultTimeoutSec
	}
	return *b.Timeout
}

func (s *Server) setTimeout(w http.ResponseWriter, r *http.Request) {
	var in timeoutBody
	if err := api.DecodeLenient(r, &in); err != nil {
		s.writeErr(w, r, err)
		return
	}
	if in.Timeout == nil {
		s.writeErr(w, r, service.Invalid("timeout", "timeout is required"))
		return
	}
	a := caller(r)
	if _, err := s.live(r.Context(), a, sandboxID(r)); err != nil {
		s.writeErr(w, r, err)
		return
	}
	if _, err := s.deps.Service.SetSandboxEnd(r.Context(), a, sandboxID(r), *in.Timeout, false); err != nil {
		s.writeErr(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// refresh is the deprecated POST /sandboxes/{id}/refreshes {duration}:
// the sandbox lives at least duration seconds more.
func (s *Server) refresh(w http.ResponseWriter, r *http.Request) {
	var in struct {
		Duration *int `json:"duration"`
	}
	if err := api.DecodeLenient(r, &in); err != nil {
		s.writeErr(w, r, err)
		return
	}
	a := caller(r)
	if _, err := s.live(r.Context(), a, sandboxID(r)); err != nil {
		s.writeErr(w, r, err)
		return
	}
	if _, err := s.deps.Service.SetSandboxEnd(r.Context(), a, sandboxID(r), timeoutBody{Timeout: in.Duration}.seconds(), true); err != nil {
		s.writeErr(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// pause answers 409 when the sandbox is already paused (the service's
// wrong-state conflict), which the SDK reads as "was paused".
func (s *Server) pause(w http.ResponseWriter, r *http.Request) {
	a := caller(r)
	if _, err := s.live(r.Context(), a, sandboxID(r)); err != nil {
		s.writeErr(w, r, err)
		return
	}
	if _, err := s.deps.Service.PauseSandbox(r.Context(), a, sandboxID(r)); err != nil {
		s.writeErr(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// connect resumes a paused sandbox with its memory (201), or extends a
// running one's life to at least timeout (200); either way the answer is
// what the SDK needs to reach it.
func (s *Server) connect(w http.ResponseWriter, r *http.Request) {
	s.resumeOr(w, r, true)
}

// resume is the deprecated POST /sandboxes/{id}/resume: like connect, but
// a running sandbox is a conflict.
func (s *Server) resume(w http.ResponseWriter, r *http.Request) {
	s.resumeOr(w, r, false)
}

func (s *Server) resumeOr(w http.ResponseWriter, r *http.Request, runningOK bool) {
	var in timeoutBody
	if err := api.DecodeLenient(r, &in); err != nil {
		s.writeErr(w, r, err)
		return
	}
	a := caller(r)
	sb, err := s.live(r.Context(), a, sandboxID(r))
	if err != nil {
		s.writeErr(w, r, err)
		return
	}
	status := http.StatusCreated
	if stateOf(sb) == stateRunning && runningOK {
		status = http.StatusOK
		sb, err = s.deps.Service.SetSandboxEnd(r.Context(), a, sb.ID, in.seconds(), true)
	} else {
		sec := in.seconds()
		sb, err = s.deps.Service.ResumeSandbox(r.Context(), a, sb.ID, service.ResumeInput{EndAfterSec: &sec})
	}
	if err != nil {
		s.writeErr(w, r, err)
		return
	}
	api.WriteJSON(w, status, s.ref(r, sb))
}

// metric is E2B's SandboxMetric.
type metric struct {
	Timestamp     time.Time `json:"timestamp"`
	TimestampUnix int64     `json:"timestampUnix"`
	CPUCount      int32     `json:"cpuCount"`
	CPUUsedPct    float64   `json:"cpuUsedPct"`
	MemUsed       uint64    `json:"memUsed"`
	MemTotal      uint64    `json:"memTotal"`
	MemCache      uint64    `json:"memCache"`
	DiskUsed      uint64    `json:"diskUsed"`
	DiskTotal     uint64    `json:"diskTotal"`
}

// metrics is the agent's recent samples of a running sandbox, oldest
// first; a paused one has none.
func (s *Server) metrics(w http.ResponseWriter, r *http.Request) {
	a := caller(r)
	sb, err := s.live(r.Context(), a, sandboxID(r))
	if err != nil {
		s.writeErr(w, r, err)
		return
	}
	out := []metric{}
	if stateOf(sb) == statePaused {
		api.WriteJSON(w, http.StatusOK, out)
		return
	}
	m, err := s.deps.Service.SandboxMetrics(r.Context(), a, sb.ID)
	if err != nil {
		s.writeErr(w, r, err)
		return
	}
	samples := m.History
	if m.Current != nil && (len(samples) == 0 || m.Current.SampledAt.After(samples[len(samples)-1].SampledAt)) {
		samples = append(samples, *m.Current)
	}
	for _, x := range samples {
		out = append(out, metric{Timestamp: x.SampledAt, TimestampUnix: x.SampledAt.Unix(), CPUCount: sb.VCPUs, CPUUsedPct: x.CPUPercent,
			MemUsed: x.MemoryUsedBytes, MemTotal: x.MemoryTotalBytes, DiskUsed: x.DiskUsedBytes, DiskTotal: x.DiskTotalBytes})
	}
	api.WriteJSON(w, http.StatusOK, out)
}

// template is E2B's Template, of what Wrenn knows about one.
type template struct {
	TemplateID    string     `json:"templateID"`
	BuildID       string     `json:"buildID"`
	Aliases       []string   `json:"aliases"`
	Names         []string   `json:"names"`
	CPUCount      int32      `json:"cpuCount"`
	MemoryMB      int32      `json:"memoryMB"`
	DiskSizeMB    int32      `json:"diskSizeMB"`
	Public        bool       `json:"public"`
	BuildStatus   string     `json:"buildStatus"`
	EnvdVersion   string     `json:"envdVersion"`
	CreatedAt     time.Time  `json:"createdAt"`
	UpdatedAt     time.Time  `json:"updatedAt"`
	CreatedBy     *struct{}  `json:"createdBy"`
	LastSpawnedAt *time.Time `json:"lastSpawnedAt"`
	SpawnCount    int        `json:"spawnCount"`
	BuildCount    int        `json:"buildCount"`
}

// templates lists what the team may start, by name (E2B's templateID).
func (s *Server) templates(w http.ResponseWriter, r *http.Request) {
	ts, err := s.deps.Service.ListTemplates(r.Context(), caller(r))
	if err != nil {
		s.writeErr(w, r, err)
		return
	}
	out := make([]template, 0, len(ts))
	for _, t := range ts {
		build := ""
		if t.BuildID != nil {
			build = *t.BuildID
		}
		out = append(out, template{TemplateID: t.Name, BuildID: build, Aliases: []string{t.Name}, Names: []string{t.Name},
			CPUCount: t.VCPUs, MemoryMB: t.MemoryMB, DiskSizeMB: t.DiskMB, Public: t.Scope != "team", BuildStatus: "ready",
			EnvdVersion: envdwire.E2BVersion, CreatedAt: t.CreatedAt, UpdatedAt: t.CreatedAt})
	}
	api.WriteJSON(w, http.StatusOK, out)
}
