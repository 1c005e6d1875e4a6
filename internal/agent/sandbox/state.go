package sandbox

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/wrenn-dev/wrenn/internal/agent/agenterr"
	"github.com/wrenn-dev/wrenn/internal/agent/images"
	"github.com/wrenn-dev/wrenn/internal/agent/vmm"
	"github.com/wrenn-dev/wrenn/internal/atomicfile"
	"github.com/wrenn-dev/wrenn/internal/envdclient"
	pb "github.com/wrenn-dev/wrenn/proto/hostagent/v1"
)

// record is what the agent persists per sandbox in
// WRENN_DIR/sandboxes/<id>/state.json (mode 0600: it holds the token).
type record struct {
	ID             string            `json:"id"`
	Template       string            `json:"template"`
	State          pb.SandboxState   `json:"state"`
	StateSeq       uint64            `json:"state_seq"`
	VCPUs          int               `json:"vcpus"`
	MemoryMB       int               `json:"memory_mb"`
	DiskMB         int               `json:"disk_mb"`
	TimeoutSec     int64             `json:"timeout_sec"`
	EnvVars        map[string]string `json:"env_vars,omitempty"`
	DefaultUser    string            `json:"default_user,omitempty"`
	DefaultWorkdir string            `json:"default_workdir,omitempty"`
	Metadata       map[string]string `json:"metadata,omitempty"`
	InternetAccess bool              `json:"internet_access"`
	Driver         string            `json:"driver"`
	StartedAt      time.Time         `json:"started_at"`
	LastActive     time.Time         `json:"last_active"`
	AccessToken    string            `json:"access_token"`
	// GivenToken is the envd access token the control plane chose at
	// create; every boot (create, resume) installs it. Empty: each boot
	// mints a fresh AccessToken.
	GivenToken string  `json:"given_token,omitempty"`
	KernelPath string  `json:"kernel_path"`
	DiskPath   string  `json:"disk_path"`
	DiskFormat string  `json:"disk_format"`
	Slot       NetSlot `json:"slot"`
	PID        int     `json:"pid"`
	// Snapshot is set while the sandbox is paused.
	Snapshot *vmm.Snapshot `json:"snapshot,omitempty"`
}

const stateFile = "state.json"

// MarshalJSON writes the state by name ("running"), not as the proto
// enum's number, so the file reads plainly and survives renumbering.
func (r record) MarshalJSON() ([]byte, error) {
	type plain record // without these methods
	return json.Marshal(struct {
		plain
		State string `json:"state"`
	}{plain(r), stateName(r.State)})
}

// UnmarshalJSON reads what MarshalJSON writes, and the numbers earlier
// agents wrote.
func (r *record) UnmarshalJSON(b []byte) error {
	type plain record
	v := struct {
		*plain
		State json.RawMessage `json:"state"`
	}{plain: (*plain)(r)}
	if err := json.Unmarshal(b, &v); err != nil {
		return err
	}
	st, err := parseState(v.State)
	if err != nil {
		return err
	}
	r.State = st
	return nil
}

// parseState is the one reading of a persisted state: a name as stateName
// writes it ("running", "auto_paused"), or the proto enum's number that
// agents wrote before names. A missing state is UNSPECIFIED (a create that
// never got far), as it always read.
func parseState(raw json.RawMessage) (pb.SandboxState, error) {
	if len(raw) == 0 || string(raw) == "null" {
		return pb.SandboxState_SANDBOX_STATE_UNSPECIFIED, nil
	}
	var name string
	if err := json.Unmarshal(raw, &name); err == nil {
		v, ok := pb.SandboxState_value["SANDBOX_STATE_"+strings.ToUpper(name)]
		if !ok || name == "" {
			return 0, fmt.Errorf("unknown sandbox state %q", name)
		}
		return pb.SandboxState(v), nil
	}
	var n int32
	if err := json.Unmarshal(raw, &n); err != nil {
		return 0, fmt.Errorf("sandbox state %s is neither a name nor a number", raw)
	}
	if _, ok := pb.SandboxState_name[n]; !ok {
		return 0, fmt.Errorf("unknown sandbox state %d", n)
	}
	return pb.SandboxState(n), nil
}

// persistLocked writes s.rec to state.json through atomicfile; s.mu held.
// A destroyed sandbox writes nothing (its directory is going away).
func (m *Manager) persistLocked(s *Sandbox) error {
	if s.removed {
		return nil
	}
	b, err := json.MarshalIndent(&s.rec, "", "  ")
	if err != nil {
		return fmt.Errorf("encode state of sandbox %q: %w", s.rec.ID, err)
	}
	if err := atomicfile.WriteFile(filepath.Join(m.sandboxDir(s.rec.ID), stateFile), b, 0o600); err != nil {
		return fmt.Errorf("persist sandbox %q: %w", s.rec.ID, err)
	}
	return nil
}

// commitLocked makes next the sandbox's record once it is on disk: when
// persisting fails, s.rec stays as it was and the caller undoes what next
// would have recorded. s.mu held.
func (m *Manager) commitLocked(s *Sandbox, next record) error {
	prev := s.rec
	s.rec = next
	if err := m.persistLocked(s); err != nil {
		s.rec = prev
		return err
	}
	return nil
}

// markDeadLocked records that the sandbox's VMM is gone; s.mu held. The
// state changes in memory even when it cannot be persisted: the VMM is gone
// either way, and an agent restarted on the older record finds it gone too.
func (m *Manager) markDeadLocked(s *Sandbox) {
	s.rec.State = pb.SandboxState_SANDBOX_STATE_DEAD
	s.rec.StateSeq = m.nextSeq()
	if err := m.persistLocked(s); err != nil {
		m.log.Error("record dead sandbox (a restarted agent finds it dead anyway)", "sandbox", s.rec.ID, "err", err)
	}
}

// Recover loads the sandboxes an earlier agent process left under
// WRENN_DIR: running VMs are re-adopted (or reported DEAD when their VMM
// is gone), paused ones are listed again, half-created ones are removed.
// It returns how many were adopted as running.
func (m *Manager) Recover(ctx context.Context) (int, error) {
	entries, err := os.ReadDir(filepath.Join(m.cfg.Dir, "sandboxes"))
	if err != nil {
		return 0, fmt.Errorf("recover: %w", err)
	}
	adopted := 0
	var errs []error
	for _, e := range entries {
		if !e.IsDir() {
			continue
		}
		dir := filepath.Join(m.cfg.Dir, "sandboxes", e.Name())
		b, err := os.ReadFile(filepath.Join(dir, stateFile))
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				m.log.Warn("recover: removing sandbox dir without state", "dir", dir)
				os.RemoveAll(dir)
				continue
			}
			errs = append(errs, fmt.Errorf("recover %s: %w", e.Name(), err))
			continue
		}
		var r record
		if err := json.Unmarshal(b, &r); err != nil || r.ID != e.Name() {
			errs = append(errs, fmt.Errorf("recover %s: corrupt state file (%v); left in place", e.Name(), err))
			continue
		}
		if r.StateSeq > m.seq.Load() {
			m.seq.Store(r.StateSeq)
		}
		s := &Sandbox{rec: r}
		ok, err := m.recoverOne(ctx, s)
		if err != nil {
			errs = append(errs, fmt.Errorf("recover %s: %w", r.ID, err))
		}
		if ok {
			adopted++
		}
	}
	m.removeOrphans()
	return adopted, errors.Join(errs...)
}

// removeOrphans deletes what a crashed agent left half-made: snapshot
// directories of sandboxes that no longer exist and unfinished or
// half-deleted templates.
func (m *Manager) removeOrphans() {
	snaps, _ := os.ReadDir(filepath.Join(m.cfg.Dir, "snapshots"))
	for _, e := range snaps {
		if _, err := m.get(e.Name()); err != nil {
			m.log.Warn("recover: removing orphaned snapshot", "dir", e.Name())
			os.RemoveAll(filepath.Join(m.cfg.Dir, "snapshots", e.Name()))
		}
	}
	tmpl, _ := os.ReadDir(filepath.Join(m.cfg.Dir, "templates"))
	for _, e := range tmpl {
		if strings.HasPrefix(e.Name(), ".tmp-") || strings.HasPrefix(e.Name(), ".del-") {
			m.log.Warn("recover: removing unfinished template", "dir", e.Name())
			os.RemoveAll(filepath.Join(m.cfg.Dir, "templates", e.Name()))
		}
	}
}

func (m *Manager) recoverOne(ctx context.Context, s *Sandbox) (bool, error) {
	r := &s.rec
	add := func() {
		m.mu.Lock()
		m.sandboxes[r.ID] = s
		m.mu.Unlock()
	}
	m.holdFiles(s, r.ID)
	switch r.State {
	case pb.SandboxState_SANDBOX_STATE_PAUSED, pb.SandboxState_SANDBOX_STATE_AUTO_PAUSED, pb.SandboxState_SANDBOX_STATE_DEAD:
		// A slot still recorded is one an earlier teardown failed to
		// release: the next teardown (resume, destroy) retries.
		if r.Slot.Name != "" {
			m.holdSlot(s, r.Slot)
		}
		add()
		return false, nil
	case pb.SandboxState_SANDBOX_STATE_RUNNING:
	default:
		// STARTING (or unknown): a create that never finished. Remove it all.
		m.log.Warn("recover: removing half-created sandbox", "sandbox", r.ID, "state", r.State)
		if r.Slot.Name != "" && m.cfg.Net.Adopt(ctx, r.Slot) == nil {
			m.holdSlot(s, r.Slot)
			if mach, err := m.cfg.Driver.Adopt(ctx, m.vmConfig(r)); err == nil {
				m.holdMachine(s, &machineRef{m: mach})
			}
		}
		s.removed = true
		return false, m.teardown(ctx, s)
	}
	// RUNNING: take the network back, then the VMM.
	if err := m.cfg.Net.Adopt(ctx, r.Slot); err != nil {
		m.log.Warn("recover: network gone, sandbox is dead", "sandbox", r.ID, "err", err)
		r.Slot = NetSlot{}
		s.mu.Lock()
		m.markDeadLocked(s)
		s.mu.Unlock()
		add()
		return false, nil
	}
	m.holdSlot(s, r.Slot)
	mach, err := m.cfg.Driver.Adopt(ctx, m.vmConfig(r))
	if err != nil {
		m.log.Warn("recover: vmm gone, sandbox is dead", "sandbox", r.ID, "err", err)
		s.mu.Lock()
		m.markDeadLocked(s)
		s.mu.Unlock()
		add()
		m.teardownVM(ctx, s, r.ID, "recover")
		return false, nil
	}
	client := envdclient.New(r.Slot.EnvdAddr)
	client.SetToken(r.AccessToken)
	mref := &machineRef{m: mach}
	m.holdMachine(s, mref)
	m.holdClient(s, client)
	s.mu.Lock()
	s.machine, s.client = mref, client
	r.PID = mach.PID()
	// Idle time while no agent ran does not count against the sandbox.
	r.LastActive = m.cfg.Now()
	if err := m.persistLocked(s); err != nil {
		// The record on disk still names the same VMM: adopting works again.
		m.log.Warn("recover: persist adopted sandbox", "sandbox", r.ID, "err", err)
	}
	s.mu.Unlock()
	add()
	go m.watch(s, mref)
	hctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := client.Health(hctx); err != nil {
		m.log.Warn("recover: adopted vm but envd does not answer yet", "sandbox", r.ID, "err", err)
	}
	m.log.Info("recover: sandbox adopted", "sandbox", r.ID, "pid", r.PID)
	return true, nil
}

// SlotNames returns the network slots held by known sandboxes, so stale
// cleanup can keep them.
func (m *Manager) SlotNames() map[string]bool {
	out := map[string]bool{}
	for _, s := range m.all() {
		s.mu.Lock()
		if s.rec.Slot.Name != "" {
			out[s.rec.Slot.Name] = true
		}
		s.mu.Unlock()
	}
	return out
}

// template is what a sandbox starts from: an image (kernel + rootfs) or a
// snapshot (restore).
type template struct {
	kernel     string
	disk       string
	diskFormat string
	snap       *vmm.Snapshot
	meta       snapshotMeta
	// defaultUser is what an image template's metadata names (base:
	// "user"), for a sandbox whose request names none.
	defaultUser string
}

// snapshotMeta is WRENN_DIR/templates/<name>/snapshot/meta.json.
type snapshotMeta struct {
	Name        string       `json:"name"`
	Source      string       `json:"source_sandbox"`
	Driver      string       `json:"driver"`
	VCPUs       int          `json:"vcpus"`
	MemoryMB    int          `json:"memory_mb"`
	KernelPath  string       `json:"kernel_path"`
	AccessToken string       `json:"access_token"`
	Snapshot    vmm.Snapshot `json:"snapshot"`
	CreatedAt   time.Time    `json:"created_at"`
}

func (m *Manager) snapshotTemplateDir(name string) string {
	return filepath.Join(m.paths.TemplateDir(name), "snapshot")
}

func (m *Manager) resolveTemplate(name string) (template, error) {
	metaPath := filepath.Join(m.snapshotTemplateDir(name), "meta.json")
	if b, err := os.ReadFile(metaPath); err == nil {
		var meta snapshotMeta
		if err := json.Unmarshal(b, &meta); err != nil {
			return template{}, wrapErr(agenterr.ErrInvalidState, err, "snapshot template %q: corrupt %s", name, metaPath)
		}
		if err := checkSnapshotFiles(meta.Snapshot); err != nil {
			return template{}, wrapErr(agenterr.ErrInvalidState, err, "snapshot template %q", name)
		}
		snap := meta.Snapshot
		return template{kernel: meta.KernelPath, disk: snap.DiskPath, diskFormat: snap.DiskFormat, snap: &snap, meta: meta}, nil
	}
	kernel, err := m.paths.ResolvedKernel()
	if err != nil {
		return template{}, wrapErr(agenterr.ErrInvalidState, err, "kernel")
	}
	rootfs, err := m.paths.ResolvedRootfs(name)
	if err != nil {
		if _, serr := os.Stat(m.paths.TemplateDir(name)); serr != nil {
			return template{}, errorf(agenterr.ErrNotFound, "template %q not found on this host (image templates are built with `wrenn images build`)", name)
		}
		return template{}, wrapErr(agenterr.ErrInvalidState, err, "template %q", name)
	}
	tpl := template{kernel: kernel, disk: rootfs, diskFormat: "raw"}
	if md, err := images.ReadMetadata(m.paths.Metadata(name)); err == nil {
		tpl.defaultUser = md.DefaultUser
	}
	return tpl, nil
}

// checkSnapshotFiles makes sure every file a restore needs is there.
func checkSnapshotFiles(s vmm.Snapshot) error {
	for _, p := range []string{s.StatePath, s.MemoryPath, s.DiskPath} {
		if p == "" {
			continue
		}
		if _, err := os.Stat(p); err != nil {
			return fmt.Errorf("%w: %v", vmm.ErrSnapshotInvalid, err)
		}
	}
	if s.StatePath == "" {
		return fmt.Errorf("%w: no state file recorded", vmm.ErrSnapshotInvalid)
	}
	return nil
}
