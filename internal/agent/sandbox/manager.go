// Package sandbox is the host agent's sandbox manager: it boots sandboxes
// as microVMs through a vmm.Driver, gives each a network slot and a
// copy-on-write disk, talks to the envd inside, and keeps the agent's view
// of every sandbox (in memory behind a lock, persisted under WRENN_DIR so a
// restarted agent re-adopts running VMs).
//
// Layout under WRENN_DIR:
//
//	sandboxes/<id>/state.json   the sandbox's record (0600: holds envd's token)
//	sandboxes/<id>/rootfs.disk  its copy-on-write root disk
//	sandboxes/<id>/run/         the VMM's sockets, pid file, logs
//	snapshots/<id>/             memory, device state and disk while paused
//	templates/<name>/snapshot/  a snapshot template (meta.json + files)
//	templates/<name>/rootfs.ext4 an image template (images, FlattenRootfs)
package sandbox

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/wrenn-dev/wrenn/internal/agent/agenterr"
	"github.com/wrenn-dev/wrenn/internal/agent/cleanup"
	"github.com/wrenn-dev/wrenn/internal/agent/images"
	"github.com/wrenn-dev/wrenn/internal/agent/vmm"
	"github.com/wrenn-dev/wrenn/internal/envdclient"
	"github.com/wrenn-dev/wrenn/internal/names"
	"github.com/wrenn-dev/wrenn/internal/telemetry"
	pb "github.com/wrenn-dev/wrenn/proto/hostagent/v1"
)

// Config configures a Manager. Zero durations and sizes take defaults.
type Config struct {
	// Dir is WRENN_DIR.
	Dir    string
	Driver vmm.Driver
	Accel  vmm.Accel
	Net    NetworkAllocator
	Disks  DiskMaker
	Logger *slog.Logger
	// Now is the clock (time.Now when nil).
	Now func() time.Time
	// KernelArgs builds the kernel command line for a slot (a default for
	// the minimal image when nil).
	KernelArgs func(slot NetSlot) string

	MaxVCPUs, MaxMemoryMB, MaxDiskMB int
	DefaultVCPUs, DefaultMemoryMB    int
	// BootTimeout bounds VM start until envd answers /health.
	BootTimeout time.Duration
	// ExecTimeout is the default for Exec without a timeout; MaxExecTimeout caps it.
	ExecTimeout, MaxExecTimeout time.Duration
	// ExecOutputCap bounds each of stdout and stderr kept by Exec.
	ExecOutputCap int
	// MaxUnaryFile bounds ReadFile (larger files need ReadFileStream).
	MaxUnaryFile int64
	// ReapInterval is how often the idle reaper runs; MetricsInterval how
	// often metrics are sampled; MetricsHistory how many samples are kept.
	ReapInterval, MetricsInterval time.Duration
	MetricsHistory                int
	// MetricsConcurrency is how many sandboxes are sampled at once (4).
	MetricsConcurrency int
	// OpTimeout bounds one background lifecycle operation (reaper pause).
	OpTimeout time.Duration
	// Observe, when set, is told the duration and outcome of every create,
	// restore, pause and resume (the agent's Prometheus histograms).
	Observe func(op string, took time.Duration, err error)
}

func (c *Config) setDefaults() {
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.KernelArgs == nil {
		c.KernelArgs = DefaultKernelArgs
	}
	if c.Observe == nil {
		c.Observe = func(string, time.Duration, error) {}
	}
	def := func(p *int, v int) {
		if *p <= 0 {
			*p = v
		}
	}
	defD := func(p *time.Duration, v time.Duration) {
		if *p <= 0 {
			*p = v
		}
	}
	def(&c.MaxVCPUs, 4)
	def(&c.MaxMemoryMB, 4096)
	def(&c.MaxDiskMB, 20480)
	def(&c.DefaultVCPUs, 1)
	def(&c.DefaultMemoryMB, 256)
	def(&c.ExecOutputCap, 16<<20)
	def(&c.MetricsHistory, 60)
	def(&c.MetricsConcurrency, 4)
	defD(&c.BootTimeout, 90*time.Second)
	defD(&c.ExecTimeout, 60*time.Second)
	defD(&c.MaxExecTimeout, 24*time.Hour)
	defD(&c.ReapInterval, 2*time.Second)
	defD(&c.MetricsInterval, 5*time.Second)
	defD(&c.OpTimeout, 5*time.Minute)
	if c.MaxUnaryFile <= 0 {
		c.MaxUnaryFile = 64 << 20
	}
}

// MinMemoryMB is the smallest guest the minimal image boots in.
const MinMemoryMB = 64

// DefaultKernelArgs is the command line for the minimal image: envd is
// init and reads the guest address from ip=. Drivers may want more (the
// agent passes the qemu package's KernelCmdline).
func DefaultKernelArgs(slot NetSlot) string {
	return "console=ttyS0 root=/dev/vda rw rootfstype=ext4 init=/usr/bin/envd panic=-1 quiet " + slot.KernelIPArg
}

// Manager owns every sandbox on this host.
type Manager struct {
	cfg    Config
	paths  images.Paths
	log    *slog.Logger
	seq    atomic.Uint64
	closed chan struct{}

	mu        sync.Mutex
	sandboxes map[string]*Sandbox
}

// New validates cfg and returns a Manager. Call Recover to adopt what an
// earlier agent left, then Run for the reaper and metrics.
func New(cfg Config) (*Manager, error) {
	cfg.setDefaults()
	if cfg.Dir == "" || !filepath.IsAbs(cfg.Dir) {
		return nil, fmt.Errorf("sandbox manager: Dir %q must be an absolute path", cfg.Dir)
	}
	if cfg.Driver == nil || cfg.Net == nil || cfg.Disks == nil {
		return nil, errors.New("sandbox manager: Driver, Net and Disks are required")
	}
	for _, d := range []string{"sandboxes", "snapshots", "templates"} {
		if err := os.MkdirAll(filepath.Join(cfg.Dir, d), 0o755); err != nil {
			return nil, fmt.Errorf("sandbox manager: %w", err)
		}
	}
	m := &Manager{
		cfg:       cfg,
		paths:     images.NewPaths(cfg.Dir),
		log:       cfg.Logger,
		closed:    make(chan struct{}),
		sandboxes: make(map[string]*Sandbox),
	}
	m.seq.Store(uint64(cfg.Now().UnixNano()))
	return m, nil
}

// Dir is WRENN_DIR.
func (m *Manager) Dir() string { return m.cfg.Dir }

// DriverName is the VMM in use.
func (m *Manager) DriverName() string { return m.cfg.Driver.Name() }

// Accel is the acceleration in use.
func (m *Manager) Accel() vmm.Accel { return m.cfg.Accel }

func (m *Manager) nextSeq() uint64 { return m.seq.Add(1) }

func (m *Manager) sandboxDir(id string) string { return filepath.Join(m.cfg.Dir, "sandboxes", id) }
func (m *Manager) snapshotDir(id string) string {
	return filepath.Join(m.cfg.Dir, "snapshots", id)
}

// Sandbox is one sandbox's state. Fields are guarded by mu; op serialises
// lifecycle operations (create, pause, resume, destroy) on it.
type Sandbox struct {
	op sync.Mutex
	// restored: booted from a snapshot template (set by boot, under op).
	restored bool
	// vm and files hold the undo steps of what the sandbox holds (see
	// teardown.go). They are run without mu held.
	vm, files cleanup.Stack

	mu         sync.Mutex
	rec        record
	machine    *machineRef
	client     *envdclient.Client
	metrics    []*pb.SandboxMetrics
	lastSample *cpuSample
	// removed: destroyed; a handle someone still holds must not act.
	removed bool
}

type machineRef struct {
	m        vmm.Machine
	stopping atomic.Bool
}

type cpuSample struct {
	at  time.Time
	cpu time.Duration
}

func (s *Sandbox) info() *pb.SandboxInfo {
	s.mu.Lock()
	defer s.mu.Unlock()
	r := &s.rec
	i := &pb.SandboxInfo{
		SandboxId:   r.ID,
		State:       r.State,
		StateSeq:    r.StateSeq,
		Template:    r.Template,
		Vcpus:       uint32(r.VCPUs),
		MemoryMb:    uint32(r.MemoryMB),
		DiskMb:      uint32(r.DiskMB),
		TimeoutSec:  r.TimeoutSec,
		Metadata:    copyMap(r.Metadata),
		Vmm:         r.Driver,
		EnvdAddress: r.Slot.EnvdAddr,
	}
	if !r.StartedAt.IsZero() {
		i.StartedAt = timestamppb.New(r.StartedAt)
	}
	if !r.LastActive.IsZero() {
		i.LastActiveAt = timestamppb.New(r.LastActive)
	}
	return i
}

func copyMap(m map[string]string) map[string]string {
	if len(m) == 0 {
		return nil
	}
	out := make(map[string]string, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

func (m *Manager) get(id string) (*Sandbox, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	s, ok := m.sandboxes[id]
	if !ok {
		return nil, notFound(id)
	}
	return s, nil
}

// running returns the sandbox's envd client if it is RUNNING, and records
// activity (every exec, process, PTY and file call counts).
func (m *Manager) running(id string) (*Sandbox, *envdclient.Client, error) {
	s, err := m.get(id)
	if err != nil {
		return nil, nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.rec.State != pb.SandboxState_SANDBOX_STATE_RUNNING || s.client == nil {
		return nil, nil, errorf(agenterr.ErrInvalidState, "sandbox %q is %s, not running", id, stateName(s.rec.State))
	}
	s.rec.LastActive = m.cfg.Now()
	return s, s.client, nil
}

// GuestPort is where the agent reaches TCP port of running sandbox id:
// the slot's host-reachable address, DNAT'ed to the guest for every port
// (see network.Slot.GuestPortAddr), with a function that records activity
// on the sandbox (the HTTP proxy's traffic counts, as calls do).
func (m *Manager) GuestPort(id string, port uint16) (addr string, touch func(), err error) {
	s, _, err := m.running(id)
	if err != nil {
		return "", nil, err
	}
	s.mu.Lock()
	envd := s.rec.Slot.EnvdAddr
	s.mu.Unlock()
	host, _, err := net.SplitHostPort(envd)
	if err != nil {
		return "", nil, fmt.Errorf("sandbox %q: guest address %q: %w", id, envd, err)
	}
	return net.JoinHostPort(host, strconv.Itoa(int(port))), func() { m.touch(s) }, nil
}

// touch records activity on a sandbox (cheap; not persisted each time).
func (m *Manager) touch(s *Sandbox) {
	s.mu.Lock()
	s.rec.LastActive = m.cfg.Now()
	s.mu.Unlock()
}

func stateName(st pb.SandboxState) string {
	return strings.ToLower(strings.TrimPrefix(st.String(), "SANDBOX_STATE_"))
}

func validID(id string) bool {
	if id == "" || len(id) > 64 || id[0] == '.' || id[0] == '-' {
		return false
	}
	return onlyIDChars(id)
}

// validToken: an envd access token travels in a header and a JSON body.
func validToken(tok string) bool {
	return len(tok) >= 16 && len(tok) <= 128 && onlyIDChars(tok)
}

func onlyIDChars(s string) bool {
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_') {
			return false
		}
	}
	return true
}

func randomHex(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(fmt.Sprintf("crypto/rand: %v", err)) // never fails on Linux
	}
	return hex.EncodeToString(b)
}

// validateSize applies defaults and checks bounds.
func (m *Manager) validateSize(req *pb.CreateSandboxRequest) (vcpus, memMB, diskMB int, err error) {
	vcpus, memMB, diskMB = int(req.GetVcpus()), int(req.GetMemoryMb()), int(req.GetDiskMb())
	if vcpus == 0 {
		vcpus = m.cfg.DefaultVCPUs
	}
	if memMB == 0 {
		memMB = m.cfg.DefaultMemoryMB
	}
	switch {
	case vcpus < 1 || vcpus > m.cfg.MaxVCPUs:
		return 0, 0, 0, agenterr.Invalid("vcpus", "vcpus %d out of range 1..%d", vcpus, m.cfg.MaxVCPUs)
	case memMB < MinMemoryMB || memMB > m.cfg.MaxMemoryMB:
		return 0, 0, 0, agenterr.Invalid("memory_mb", "memory_mb %d out of range %d..%d", memMB, MinMemoryMB, m.cfg.MaxMemoryMB)
	case diskMB > m.cfg.MaxDiskMB:
		return 0, 0, 0, agenterr.Invalid("disk_mb", "disk_mb %d above the maximum %d", diskMB, m.cfg.MaxDiskMB)
	case req.GetTimeoutSec() < 0:
		return 0, 0, 0, agenterr.Invalid("timeout_sec", "timeout_sec %d is negative", req.GetTimeoutSec())
	}
	return vcpus, memMB, diskMB, nil
}

// Create boots a new sandbox and returns once envd inside answers and is
// initialised. Any failure removes everything it made.
func (m *Manager) Create(ctx context.Context, req *pb.CreateSandboxRequest) (*pb.SandboxInfo, error) {
	id := req.GetSandboxId()
	if id == "" {
		id = "sb-" + randomHex(8)
	}
	if !validID(id) {
		return nil, agenterr.Invalid("sandbox_id", "sandbox_id %q: use 1-64 letters, digits, '-' or '_'", id)
	}
	tmpl := req.GetTemplate()
	if tmpl == "" {
		tmpl = images.MinimalTemplate
	}
	if err := names.CheckTemplate(tmpl); err != nil {
		return nil, agenterr.Invalid("template", "%v", err)
	}
	vcpus, memMB, diskMB, err := m.validateSize(req)
	if err != nil {
		return nil, err
	}
	for k := range req.GetEnvVars() {
		if k == "" || strings.ContainsAny(k, "=\x00") {
			return nil, agenterr.Invalid("env_vars", "env var name %q is invalid", k)
		}
	}
	if tok := req.GetEnvdAccessToken(); tok != "" && !validToken(tok) {
		return nil, agenterr.Invalid("envd_access_token", "envd_access_token: use 16-128 letters, digits, '-' or '_'")
	}
	internet := true
	if req.InternetAccess != nil {
		internet = req.GetInternetAccess()
	}
	now := m.cfg.Now()
	s := &Sandbox{rec: record{
		ID: id, Template: tmpl, VCPUs: vcpus, MemoryMB: memMB, DiskMB: diskMB,
		TimeoutSec: req.GetTimeoutSec(), EnvVars: copyMap(req.GetEnvVars()), Metadata: copyMap(req.GetMetadata()),
		DefaultUser: req.GetDefaultUser(), DefaultWorkdir: req.GetDefaultWorkdir(),
		GivenToken:     req.GetEnvdAccessToken(),
		InternetAccess: internet, Driver: m.cfg.Driver.Name(),
		State: pb.SandboxState_SANDBOX_STATE_STARTING, StateSeq: m.nextSeq(),
		StartedAt: now, LastActive: now,
	}}
	s.op.Lock()
	defer s.op.Unlock()
	m.mu.Lock()
	if _, ok := m.sandboxes[id]; ok {
		m.mu.Unlock()
		return nil, errorf(agenterr.ErrExists, "sandbox %q already exists", id)
	}
	select {
	case <-m.closed:
		m.mu.Unlock()
		return nil, errorf(agenterr.ErrUnavailable, "agent is shutting down")
	default:
	}
	m.sandboxes[id] = s
	m.mu.Unlock()

	start := time.Now()
	err = m.boot(ctx, s)
	op := telemetry.OpCreate
	if s.restored {
		op = telemetry.OpRestore
	}
	m.cfg.Observe(op, time.Since(start), err)
	if err != nil {
		s.mu.Lock()
		s.removed = true // a handle taken meanwhile finds it gone
		s.mu.Unlock()
		if terr := m.teardown(ctx, s); terr != nil {
			m.log.Warn("clean up after failed create", "sandbox", id, "err", terr)
		}
		m.mu.Lock()
		delete(m.sandboxes, id)
		m.mu.Unlock()
		m.log.Warn("sandbox create failed", "sandbox", id, "err", err)
		return nil, err
	}
	m.log.Info("sandbox created", "sandbox", id, "template", tmpl, "took", time.Since(start).Round(time.Millisecond))
	return s.info(), nil
}

// boot makes the disk, network and VM for s (STARTING) and brings envd up.
// What it acquires is recorded on s's stacks; on failure the caller tears
// it down.
func (m *Manager) boot(ctx context.Context, s *Sandbox) error {
	r := &s.rec
	dir := m.sandboxDir(r.ID)
	tpl, err := m.resolveTemplate(r.Template)
	if err != nil {
		return err
	}
	s.restored = tpl.snap != nil
	if r.DefaultUser == "" {
		r.DefaultUser = tpl.defaultUser
	}
	if tpl.snap != nil {
		if r.VCPUs != tpl.meta.VCPUs || r.MemoryMB != tpl.meta.MemoryMB {
			if r.VCPUs != m.cfg.DefaultVCPUs || r.MemoryMB != m.cfg.DefaultMemoryMB {
				return agenterr.Invalid("template", "snapshot template %q has %d vCPUs and %d MB; a sandbox from it cannot differ", r.Template, tpl.meta.VCPUs, tpl.meta.MemoryMB)
			}
			r.VCPUs, r.MemoryMB = tpl.meta.VCPUs, tpl.meta.MemoryMB
		}
		if tpl.meta.Driver != m.cfg.Driver.Name() {
			return errorf(agenterr.ErrInvalidState, "snapshot template %q was made by %s, this agent runs %s", r.Template, tpl.meta.Driver, m.cfg.Driver.Name())
		}
	}
	m.holdFiles(s, r.ID)
	if err := os.MkdirAll(filepath.Join(dir, "run"), 0o700); err != nil {
		return fmt.Errorf("create sandbox dir: %w", err)
	}
	s.mu.Lock()
	perr := m.persistLocked(s)
	s.mu.Unlock()
	if perr != nil {
		return perr
	}

	ns, err := m.cfg.Net.Allocate(ctx, r.ID, r.InternetAccess)
	if err != nil {
		return wrapErr(agenterr.ErrUnavailable, err, "allocate network")
	}
	m.holdSlot(s, ns)
	s.mu.Lock()
	r.Slot = ns
	s.mu.Unlock()

	r.DiskPath = filepath.Join(dir, "rootfs.disk")
	r.DiskFormat, err = m.cfg.Disks.CreateOverlay(ctx, tpl.disk, tpl.diskFormat, r.DiskPath, r.DiskMB)
	if err != nil {
		return wrapErr(nil, err, "create disk")
	}
	r.KernelPath = tpl.kernel
	cfg := m.vmConfig(r)
	var mach vmm.Machine
	if tpl.snap != nil {
		mach, err = m.cfg.Driver.Restore(ctx, cfg, *tpl.snap)
	} else {
		mach, err = m.cfg.Driver.Start(ctx, cfg)
	}
	if err != nil {
		return wrapErr(kindForVMM(err), err, "start vm")
	}
	mref := &machineRef{m: mach}
	m.holdMachine(s, mref)
	client := envdclient.New(ns.EnvdAddr)
	m.holdClient(s, client)
	if tpl.snap != nil {
		client.SetToken(tpl.meta.AccessToken)
	}
	if err := m.initEnvd(ctx, s, mref, client); err != nil {
		return err
	}
	s.mu.Lock()
	next := s.rec
	next.PID = mach.PID()
	next.LastActive = m.cfg.Now()
	next.State = pb.SandboxState_SANDBOX_STATE_RUNNING
	next.StateSeq = m.nextSeq()
	// Unrecorded, a running sandbox would be removed as half-created by
	// the next agent: fail the create instead.
	err = m.commitLocked(s, next)
	if err == nil {
		s.machine, s.client = mref, client
	}
	s.mu.Unlock()
	if err != nil {
		return wrapErr(nil, err, "record running sandbox")
	}
	go m.watch(s, mref)
	return nil
}

// kindForVMM classifies a VMM driver error (nil: internal).
func kindForVMM(err error) error {
	switch {
	case errors.Is(err, vmm.ErrSnapshotInvalid):
		return agenterr.ErrInvalidState
	case errors.Is(err, vmm.ErrUnsupported):
		return agenterr.ErrInvalidState
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, context.Canceled):
		return agenterr.ErrUnavailable
	}
	return nil
}

func (m *Manager) vmConfig(r *record) vmm.Config {
	return vmm.Config{
		ID:         r.ID,
		KernelPath: r.KernelPath,
		KernelArgs: m.cfg.KernelArgs(r.Slot),
		DiskPath:   r.DiskPath,
		DiskFormat: r.DiskFormat,
		VCPUs:      r.VCPUs,
		MemoryMB:   r.MemoryMB,
		TapDevice:  r.Slot.TapDevice,
		MAC:        r.Slot.GuestMAC,
		NetNSPath:  r.Slot.NetNSPath,
		RunDir:     filepath.Join(m.sandboxDir(r.ID), "run"),
		Accel:      m.cfg.Accel,
	}
}

// initEnvd waits for envd and initialises it with its access token (the
// control plane's, else a fresh one), the env vars, the default user and
// directory, and the host's clock (stale after a restore).
func (m *Manager) initEnvd(ctx context.Context, s *Sandbox, mref *machineRef, client *envdclient.Client) error {
	bctx, cancel := context.WithTimeout(ctx, m.cfg.BootTimeout)
	defer cancel()
	// Stop waiting as soon as the VMM dies.
	go func() {
		select {
		case <-mref.m.Done():
			cancel()
		case <-bctx.Done():
		}
	}()
	if err := client.WaitHealthy(bctx, 0); err != nil {
		select {
		case <-mref.m.Done():
			return errorf(nil, "vm exited before envd answered (see %s)", filepath.Join(m.sandboxDir(s.rec.ID), "run"))
		default:
		}
		return wrapErr(agenterr.ErrUnavailable, err, "wait for envd")
	}
	tok := s.rec.GivenToken
	if tok == "" {
		tok = randomHex(24)
	}
	now := m.cfg.Now()
	if err := client.Init(bctx, envdclient.InitRequest{EnvVars: s.rec.EnvVars, AccessToken: &tok, Timestamp: &now,
		DefaultUser: s.rec.DefaultUser, DefaultWorkdir: s.rec.DefaultWorkdir}); err != nil {
		return wrapErr(agenterr.ErrUnavailable, err, "init envd")
	}
	s.rec.AccessToken = tok
	return nil
}

// watch marks the sandbox DEAD when its VMM exits without being asked to,
// and gives back what the VM held.
func (m *Manager) watch(s *Sandbox, mref *machineRef) {
	<-mref.m.Done()
	if mref.stopping.Load() {
		return
	}
	s.mu.Lock()
	if s.machine != mref || s.removed {
		s.mu.Unlock()
		return
	}
	id := s.rec.ID
	s.machine, s.client = nil, nil
	m.markDeadLocked(s)
	s.mu.Unlock()
	m.log.Warn("sandbox vmm exited unexpectedly", "sandbox", id)
	// Its network slot is free to go now, not only at destroy.
	m.teardownVM(context.Background(), s, id, "dead vmm")
}

// Destroy stops a sandbox and removes everything it owns.
func (m *Manager) Destroy(ctx context.Context, id string) error {
	s, err := m.get(id)
	if err != nil {
		return err
	}
	s.op.Lock()
	defer s.op.Unlock()
	s.mu.Lock()
	if s.removed {
		s.mu.Unlock()
		return notFound(id)
	}
	s.removed = true
	s.machine, s.client = nil, nil
	s.rec.State = pb.SandboxState_SANDBOX_STATE_STOPPED
	s.rec.StateSeq = m.nextSeq()
	s.mu.Unlock()
	err = m.teardown(ctx, s)
	m.mu.Lock()
	if m.sandboxes[id] == s {
		delete(m.sandboxes, id)
	}
	m.mu.Unlock()
	if err != nil {
		return wrapErr(nil, err, "destroy sandbox %q", id)
	}
	m.log.Info("sandbox destroyed", "sandbox", id)
	return nil
}

// Get describes one sandbox.
func (m *Manager) Get(ctx context.Context, id string) (*pb.SandboxInfo, error) {
	s, err := m.get(id)
	if err != nil {
		return nil, err
	}
	return s.info(), nil
}

// List describes every sandbox; auto-paused ones are also listed by ID.
// Nothing is drained: asking twice gives the same answer.
func (m *Manager) List(ctx context.Context) *pb.ListSandboxesResponse {
	res := &pb.ListSandboxesResponse{}
	all := m.all()
	res.Metrics = m.recentMetrics(all)
	for _, s := range all {
		i := s.info()
		res.Sandboxes = append(res.Sandboxes, i)
		if i.State == pb.SandboxState_SANDBOX_STATE_AUTO_PAUSED {
			res.AutoPausedSandboxIds = append(res.AutoPausedSandboxIds, i.SandboxId)
		}
	}
	return res
}

func (m *Manager) all() []*Sandbox {
	m.mu.Lock()
	out := make([]*Sandbox, 0, len(m.sandboxes))
	for _, s := range m.sandboxes {
		out = append(out, s)
	}
	m.mu.Unlock()
	sort.Slice(out, func(i, j int) bool { return out[i].rec.ID < out[j].rec.ID })
	return out
}

// Counts returns how many sandboxes run and how many are paused.
func (m *Manager) Counts() (running, paused int) {
	for _, s := range m.all() {
		s.mu.Lock()
		switch s.rec.State {
		case pb.SandboxState_SANDBOX_STATE_RUNNING, pb.SandboxState_SANDBOX_STATE_STARTING:
			running++
		case pb.SandboxState_SANDBOX_STATE_PAUSED, pb.SandboxState_SANDBOX_STATE_AUTO_PAUSED:
			paused++
		}
		s.mu.Unlock()
	}
	return running, paused
}

// Limits is the largest sandbox Create accepts: validateSize checks these
// same values, and the agent reports them to the control plane.
func (m *Manager) Limits() *pb.SandboxLimits {
	return &pb.SandboxLimits{MaxVcpus: uint32(m.cfg.MaxVCPUs), MaxMemoryMb: uint32(m.cfg.MaxMemoryMB), MaxDiskMb: uint32(m.cfg.MaxDiskMB)}
}

// Committed sums the vCPUs and memory of starting and running sandboxes;
// paused ones hold neither (their memory is a file on disk).
func (m *Manager) Committed() (vcpus, memoryMB int) {
	for _, s := range m.all() {
		s.mu.Lock()
		switch s.rec.State {
		case pb.SandboxState_SANDBOX_STATE_RUNNING, pb.SandboxState_SANDBOX_STATE_STARTING:
			vcpus += s.rec.VCPUs
			memoryMB += s.rec.MemoryMB
		}
		s.mu.Unlock()
	}
	return vcpus, memoryMB
}

// Ping resets the idle timer.
func (m *Manager) Ping(ctx context.Context, id string) (time.Time, error) {
	s, err := m.get(id)
	if err != nil {
		return time.Time{}, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.rec.LastActive = m.cfg.Now()
	return s.rec.LastActive, nil
}

// Templates lists the template names on this host (image and snapshot).
func (m *Manager) Templates() []string {
	entries, err := os.ReadDir(filepath.Join(m.cfg.Dir, "templates"))
	if err != nil {
		return nil
	}
	var out []string
	for _, e := range entries {
		if e.IsDir() && names.ValidTemplate(e.Name()) {
			out = append(out, e.Name())
		}
	}
	return out
}

// StateCounts is the number of sandboxes in each state, every state
// included (the agent's wrenn_agent_sandboxes gauge).
func (m *Manager) StateCounts() map[string]float64 {
	out := map[string]float64{}
	for v := range pb.SandboxState_name {
		if v != int32(pb.SandboxState_SANDBOX_STATE_UNSPECIFIED) {
			out[stateName(pb.SandboxState(v))] = 0
		}
	}
	for _, s := range m.all() {
		s.mu.Lock()
		out[stateName(s.rec.State)]++
		s.mu.Unlock()
	}
	return out
}

// Run runs the idle reaper and, beside it (so slow guests never delay a
// reap), the metrics sampler until ctx ends.
func (m *Manager) Run(ctx context.Context) {
	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Go(func() { m.runSampler(ctx) })
	reap := time.NewTicker(m.cfg.ReapInterval)
	defer reap.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-reap.C:
			m.Reap(ctx)
		}
	}
}

// Close stops accepting creates and lets go of the VMs (drivers that can
// detach do). Running VMs are left running on purpose: the next agent
// process adopts them.
func (m *Manager) Close() {
	m.mu.Lock()
	defer m.mu.Unlock()
	select {
	case <-m.closed:
	default:
		close(m.closed)
	}
	for _, s := range m.sandboxes {
		s.mu.Lock()
		if s.client != nil {
			s.client.Close()
		}
		if s.machine != nil {
			// Our watcher must not report a VM we merely stop watching, and
			// the next agent needs the VMM's control socket (QEMU serves
			// one QMP client at a time).
			s.machine.stopping.Store(true)
			if d, ok := s.machine.m.(interface{ Detach() }); ok {
				d.Detach()
			}
		}
		s.mu.Unlock()
	}
}
