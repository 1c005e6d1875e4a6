package sandbox

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/wrenn-dev/wrenn/internal/agent/agenterr"
	"github.com/wrenn-dev/wrenn/internal/agent/images"
	"github.com/wrenn-dev/wrenn/internal/agent/vmm"
	"github.com/wrenn-dev/wrenn/internal/atomicfile"
	"github.com/wrenn-dev/wrenn/internal/envdclient"
	"github.com/wrenn-dev/wrenn/internal/names"
	"github.com/wrenn-dev/wrenn/internal/telemetry"
	pb "github.com/wrenn-dev/wrenn/proto/hostagent/v1"
)

func isPaused(st pb.SandboxState) bool {
	return st == pb.SandboxState_SANDBOX_STATE_PAUSED || st == pb.SandboxState_SANDBOX_STATE_AUTO_PAUSED
}

// Pause saves the sandbox's memory, devices and disk under
// WRENN_DIR/snapshots/<id> and tears the VM down. If anything fails before
// the VM is torn down, the VM keeps running.
func (m *Manager) Pause(ctx context.Context, id string) (*pb.SandboxInfo, error) {
	return m.pause(ctx, id, false, nil)
}

// pause does Pause; auto marks a reaper pause, stillIdle (when set) is
// re-checked under the operation lock so a ping that raced the reaper wins.
func (m *Manager) pause(ctx context.Context, id string, auto bool, stillIdle func(*record) bool) (_ *pb.SandboxInfo, err error) {
	defer func(start time.Time) { m.cfg.Observe(telemetry.OpPause, time.Since(start), err) }(time.Now())
	s, err := m.get(id)
	if err != nil {
		return nil, err
	}
	s.op.Lock()
	defer s.op.Unlock()
	s.mu.Lock()
	if s.removed {
		s.mu.Unlock()
		return nil, notFound(id)
	}
	if s.rec.State != pb.SandboxState_SANDBOX_STATE_RUNNING || s.machine == nil {
		st := s.rec.State
		s.mu.Unlock()
		return nil, errorf(agenterr.ErrInvalidState, "sandbox %q is %s: only a running sandbox can be paused", id, stateName(st))
	}
	if stillIdle != nil && !stillIdle(&s.rec) {
		s.mu.Unlock()
		return nil, wrapErr(agenterr.ErrInvalidState, errBecameActive, "sandbox %q", id)
	}
	mref := s.machine
	diskPath, diskFormat := s.rec.DiskPath, s.rec.DiskFormat
	s.mu.Unlock()

	start := time.Now()
	dir := m.snapshotDir(id)
	if err := os.RemoveAll(dir); err != nil {
		return nil, fmt.Errorf("clear old snapshot: %w", err)
	}
	if err := mref.m.Pause(ctx); err != nil {
		return nil, wrapErr(kindForVMM(err), err, "pause vm")
	}
	snap, err := mref.m.Snapshot(ctx, dir)
	if err != nil {
		// Disk full, VMM trouble: the VM must keep running.
		return nil, keepRunning(ctx, mref, dir, wrapErr(kindForVMM(err), err, "snapshot vm"))
	}
	if snap.DiskPath == "" {
		snap.DiskPath, snap.DiskFormat = diskPath, diskFormat
	}
	if snap.Driver == "" {
		snap.Driver = m.cfg.Driver.Name()
	}
	st := pb.SandboxState_SANDBOX_STATE_PAUSED
	if auto {
		st = pb.SandboxState_SANDBOX_STATE_AUTO_PAUSED
	}
	s.mu.Lock()
	next := s.rec
	next.Snapshot = &snap
	next.PID = 0
	next.State = st
	next.StateSeq = m.nextSeq()
	err = m.commitLocked(s, next)
	if err == nil {
		s.machine, s.client = nil, nil
		s.lastSample = nil
	}
	s.mu.Unlock()
	if err != nil {
		// A snapshot the record does not name is lost to a restarted agent.
		return nil, keepRunning(ctx, mref, dir, wrapErr(nil, err, "record paused sandbox"))
	}
	// From here the sandbox is paused whatever happens: the snapshot is safe.
	m.teardownVM(ctx, s, id, "pause")
	m.log.Info("sandbox paused", "sandbox", id, "auto", auto, "took", time.Since(start).Round(time.Millisecond))
	return s.info(), nil
}

// keepRunning abandons a pause that failed (err) before the VM was torn
// down: it drops the snapshot directory and lets the VM run on.
func keepRunning(ctx context.Context, mref *machineRef, dir string, err error) error {
	os.RemoveAll(dir)
	if rerr := mref.m.Resume(context.WithoutCancel(ctx)); rerr != nil {
		return wrapErr(nil, errors.Join(err, rerr), "pause failed and the vm could not be resumed")
	}
	return err
}

// Resume restores a paused sandbox on a fresh network slot and
// re-initialises envd (clock, new access token, env). On failure the
// sandbox stays paused with its snapshot untouched.
func (m *Manager) Resume(ctx context.Context, id string, timeoutSec *int64) (_ *pb.SandboxInfo, err error) {
	defer func(start time.Time) { m.cfg.Observe(telemetry.OpResume, time.Since(start), err) }(time.Now())
	if timeoutSec != nil && *timeoutSec < 0 {
		return nil, agenterr.Invalid("timeout_sec", "timeout_sec %d is negative", *timeoutSec)
	}
	s, err := m.get(id)
	if err != nil {
		return nil, err
	}
	s.op.Lock()
	defer s.op.Unlock()
	s.mu.Lock()
	if s.removed {
		s.mu.Unlock()
		return nil, notFound(id)
	}
	if !isPaused(s.rec.State) {
		st := s.rec.State
		s.mu.Unlock()
		return nil, errorf(agenterr.ErrInvalidState, "sandbox %q is %s: only a paused sandbox can be resumed", id, stateName(st))
	}
	if s.rec.Snapshot == nil {
		s.mu.Unlock()
		return nil, errorf(agenterr.ErrInvalidState, "sandbox %q: no snapshot recorded", id)
	}
	snap := *s.rec.Snapshot
	diskPath := s.rec.DiskPath
	s.mu.Unlock()
	if err := checkSnapshotFiles(snap); err != nil {
		return nil, wrapErr(agenterr.ErrInvalidState, err, "resume %q: snapshot under %s", id, snap.Dir)
	}
	if snap.Driver != "" && snap.Driver != m.cfg.Driver.Name() {
		return nil, errorf(agenterr.ErrInvalidState, "resume %q: snapshot made by %s, this agent runs %s", id, snap.Driver, m.cfg.Driver.Name())
	}
	start := time.Now()
	// What the previous VM could not give back (a network slot) goes first.
	if err := undo(ctx, &s.vm); err != nil {
		return nil, wrapErr(agenterr.ErrUnavailable, err, "tear down the previous vm")
	}
	// The driver may have saved the disk inside the snapshot directory; the
	// sandbox's disk lives in its own directory.
	if snap.DiskPath != diskPath {
		if err := m.moveSnapshotDisk(s, snap.DiskPath, diskPath); err != nil {
			return nil, err
		}
		snap.DiskPath = diskPath
	}
	slot, err := m.cfg.Net.Allocate(ctx, id, s.rec.InternetAccess)
	if err != nil {
		return nil, wrapErr(agenterr.ErrUnavailable, err, "allocate network")
	}
	m.holdSlot(s, slot)
	r := s.rec // a copy with the new slot, applied on success only
	r.Slot = slot
	mach, err := m.cfg.Driver.Restore(ctx, m.vmConfig(&r), snap)
	if err != nil {
		m.teardownVM(ctx, s, id, "resume")
		return nil, wrapErr(kindForVMM(err), err, "restore vm")
	}
	mref := &machineRef{m: mach}
	m.holdMachine(s, mref)
	client := envdclient.New(slot.EnvdAddr)
	m.holdClient(s, client)
	client.SetToken(r.AccessToken)
	tmp := &Sandbox{rec: r}
	if err := m.initEnvd(ctx, tmp, mref, client); err != nil {
		m.teardownVM(ctx, s, id, "resume")
		return nil, err
	}
	s.mu.Lock()
	next := s.rec
	next.Slot = slot
	next.AccessToken = tmp.rec.AccessToken
	next.Snapshot = nil
	next.PID = mach.PID()
	next.LastActive = m.cfg.Now()
	if timeoutSec != nil {
		next.TimeoutSec = *timeoutSec
	}
	next.State = pb.SandboxState_SANDBOX_STATE_RUNNING
	next.StateSeq = m.nextSeq()
	// Unrecorded, the resumed VM would be unknown to a restarted agent,
	// which would offer the snapshot again: stay paused instead.
	err = m.commitLocked(s, next)
	if err == nil {
		s.machine, s.client = mref, client
	}
	s.mu.Unlock()
	if err != nil {
		m.teardownVM(ctx, s, id, "resume")
		return nil, wrapErr(nil, err, "record resumed sandbox")
	}
	go m.watch(s, mref)
	// The restored VM holds what it needs (mapped or loaded memory).
	if err := os.RemoveAll(m.snapshotDir(id)); err != nil {
		m.log.Warn("resume: remove snapshot", "sandbox", id, "err", err)
	}
	m.log.Info("sandbox resumed", "sandbox", id, "took", time.Since(start).Round(time.Millisecond))
	return s.info(), nil
}

// moveSnapshotDisk moves a paused sandbox's disk from the snapshot to its
// own directory and records the move; if the record cannot be written the
// disk goes back where the record on disk says it is.
func (m *Manager) moveSnapshotDisk(s *Sandbox, from, to string) error {
	if err := os.Rename(from, to); err != nil {
		return wrapErr(nil, err, "move snapshot disk")
	}
	s.mu.Lock()
	next := s.rec
	snap := *next.Snapshot
	snap.DiskPath = to
	next.Snapshot = &snap
	err := m.commitLocked(s, next)
	s.mu.Unlock()
	if err != nil {
		if rerr := os.Rename(to, from); rerr != nil {
			err = errors.Join(err, rerr)
		}
		return wrapErr(nil, err, "record moved snapshot disk")
	}
	return nil
}

// errBecameActive: the reaper lost a race with activity; not a failure.
var errBecameActive = errors.New("became active")

func (m *Manager) isRunning(id string) bool {
	s, err := m.get(id)
	if err != nil {
		return false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.rec.State == pb.SandboxState_SANDBOX_STATE_RUNNING
}

// Reap pauses every sandbox idle longer than its timeout; when pausing
// fails it destroys the sandbox. It runs on a context detached from ctx's
// cancellation so an agent shutdown never leaves a half-done pause.
func (m *Manager) Reap(ctx context.Context) {
	now := m.cfg.Now()
	idle := func(r *record) bool {
		return r.TimeoutSec > 0 && m.cfg.Now().Sub(r.LastActive) >= time.Duration(r.TimeoutSec)*time.Second
	}
	var due []string
	for _, s := range m.all() {
		s.mu.Lock()
		if s.rec.State == pb.SandboxState_SANDBOX_STATE_RUNNING && s.rec.TimeoutSec > 0 &&
			now.Sub(s.rec.LastActive) >= time.Duration(s.rec.TimeoutSec)*time.Second {
			due = append(due, s.rec.ID)
		}
		s.mu.Unlock()
	}
	for _, id := range due {
		octx, cancel := context.WithTimeout(context.WithoutCancel(ctx), m.cfg.OpTimeout)
		_, err := m.pause(octx, id, true, idle)
		if err != nil && !errors.Is(err, errBecameActive) && m.isRunning(id) {
			m.log.Warn("reaper: pause failed, destroying sandbox", "sandbox", id, "err", err)
			if derr := m.Destroy(octx, id); derr != nil && !errors.Is(derr, agenterr.ErrNotFound) {
				m.log.Error("reaper: destroy after failed pause", "sandbox", id, "err", derr)
			}
		} else if err == nil {
			m.log.Info("reaper: sandbox auto-paused", "sandbox", id)
		}
		cancel()
	}
}

// PauseAll pauses every running sandbox, at most parallelism at a time.
func (m *Manager) PauseAll(ctx context.Context, parallelism int) *pb.PauseAllResponse {
	if parallelism <= 0 {
		parallelism = 4
	}
	res := &pb.PauseAllResponse{Failed: map[string]string{}}
	var mu sync.Mutex
	var wg sync.WaitGroup
	sem := make(chan struct{}, parallelism)
	for _, s := range m.all() {
		s.mu.Lock()
		run := s.rec.State == pb.SandboxState_SANDBOX_STATE_RUNNING
		id := s.rec.ID
		s.mu.Unlock()
		if !run {
			continue
		}
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			_, err := m.Pause(context.WithoutCancel(ctx), id)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				res.Failed[id] = err.Error()
			} else {
				res.PausedSandboxIds = append(res.PausedSandboxIds, id)
			}
		}()
	}
	wg.Wait()
	return res
}

// newTemplateDir reserves WRENN_DIR/templates/<name> by building it under a
// temporary name; commit renames it into place and syncs the rename, so a
// template appears whole or not at all.
func (m *Manager) newTemplateDir(name string) (tmp string, commit func() error, err error) {
	if err := names.CheckTemplate(name); err != nil {
		return "", nil, agenterr.Invalid("name", "%v", err)
	}
	final := m.paths.TemplateDir(name)
	if _, err := os.Stat(final); err == nil {
		return "", nil, errorf(agenterr.ErrExists, "template %q already exists", name)
	}
	tmp = filepath.Join(m.cfg.Dir, "templates", ".tmp-"+name+"-"+randomHex(4))
	if err := os.MkdirAll(tmp, 0o755); err != nil {
		return "", nil, fmt.Errorf("create template dir: %w", err)
	}
	return tmp, func() error {
		if err := os.Rename(tmp, final); err != nil {
			os.RemoveAll(tmp)
			if errors.Is(err, fs.ErrExist) || errors.Is(err, os.ErrExist) {
				return errorf(agenterr.ErrExists, "template %q already exists", name)
			}
			return fmt.Errorf("commit template %q: %w", name, err)
		}
		if err := atomicfile.SyncDir(filepath.Dir(final)); err != nil {
			return fmt.Errorf("commit template %q: %w", name, err)
		}
		return nil
	}, nil
}

// CreateSnapshot makes a snapshot template from a running or paused
// sandbox; the sandbox stays as it was.
func (m *Manager) CreateSnapshot(ctx context.Context, id, name string) (*pb.CreateSnapshotResponse, error) {
	var resp *pb.CreateSnapshotResponse
	err := m.withNewTemplate(id, name, func(s *Sandbox, tmp string) error {
		var err error
		resp, err = m.snapshotInto(ctx, s, id, name, tmp)
		return err
	})
	if err != nil {
		return nil, err
	}
	m.log.Info("snapshot template created", "template", name, "sandbox", id, "bytes", resp.SizeBytes)
	return resp, nil
}

// withNewTemplate runs build under the sandbox's operation lock with a fresh
// template directory, committed when build succeeds and removed otherwise.
func (m *Manager) withNewTemplate(id, name string, build func(s *Sandbox, tmp string) error) error {
	s, err := m.get(id)
	if err != nil {
		return err
	}
	tmp, commit, err := m.newTemplateDir(name)
	if err != nil {
		return err
	}
	s.op.Lock()
	defer s.op.Unlock()
	if err := build(s, tmp); err != nil {
		os.RemoveAll(tmp)
		return err
	}
	if err := commit(); err != nil {
		os.RemoveAll(tmp)
		return err
	}
	return nil
}

// snapshotInto writes sandbox s's snapshot template into tmp.
func (m *Manager) snapshotInto(ctx context.Context, s *Sandbox, id, name, tmp string) (*pb.CreateSnapshotResponse, error) {
	s.mu.Lock()
	r := s.rec
	mref := s.machine
	s.mu.Unlock()
	var err error
	snapDir := filepath.Join(tmp, "snapshot")
	var snap vmm.Snapshot
	switch {
	case r.State == pb.SandboxState_SANDBOX_STATE_RUNNING && mref != nil:
		if err := mref.m.Pause(ctx); err != nil {
			return nil, wrapErr(kindForVMM(err), err, "pause vm")
		}
		snap, err = mref.m.Snapshot(ctx, snapDir)
		if err == nil && (snap.DiskPath == "" || snap.DiskPath == r.DiskPath) {
			// The disk keeps changing once the VM runs again: copy it now.
			dst := filepath.Join(snapDir, "disk")
			snap.DiskFormat, err = m.cfg.Disks.Clone(ctx, r.DiskPath, r.DiskFormat, dst)
			snap.DiskPath = dst
		}
		if rerr := mref.m.Resume(context.WithoutCancel(ctx)); rerr != nil {
			m.log.Error("create snapshot: resume source vm", "sandbox", id, "err", rerr)
		}
		if err != nil {
			return nil, wrapErr(kindForVMM(err), err, "snapshot vm")
		}
	case isPaused(r.State) && r.Snapshot != nil:
		snap, err = copySnapshot(ctx, m.cfg.Disks, *r.Snapshot, snapDir)
		if err != nil {
			return nil, err
		}
	default:
		return nil, errorf(agenterr.ErrInvalidState, "sandbox %q is %s: snapshot needs a running or paused sandbox", id, stateName(r.State))
	}
	if snap.Driver == "" {
		snap.Driver = m.cfg.Driver.Name()
	}
	meta := snapshotMeta{
		Name: name, Source: id, Driver: snap.Driver, VCPUs: r.VCPUs, MemoryMB: r.MemoryMB,
		KernelPath: r.KernelPath, AccessToken: r.AccessToken, CreatedAt: m.cfg.Now(),
	}
	// Paths are rewritten for the template's final place.
	final := filepath.Join(m.paths.TemplateDir(name), "snapshot")
	meta.Snapshot = rebase(snap, snapDir, final)
	b, _ := json.MarshalIndent(meta, "", "  ")
	if err := atomicfile.WriteFile(filepath.Join(snapDir, "meta.json"), b, 0o600); err != nil {
		return nil, fmt.Errorf("write snapshot meta: %w", err)
	}
	size := dirSize(tmp)
	return &pb.CreateSnapshotResponse{Name: name, SizeBytes: size, Vcpus: uint32(r.VCPUs), MemoryMb: uint32(r.MemoryMB)}, nil
}

func rebase(s vmm.Snapshot, from, to string) vmm.Snapshot {
	re := func(p string) string {
		if rel, err := filepath.Rel(from, p); err == nil && !filepath.IsAbs(rel) && rel != ".." && !startsDotDot(rel) {
			return filepath.Join(to, rel)
		}
		return p
	}
	s.Dir = to
	s.StatePath, s.MemoryPath, s.DiskPath = re(s.StatePath), re(s.MemoryPath), re(s.DiskPath)
	return s
}

func startsDotDot(p string) bool { return len(p) >= 3 && p[:3] == "../" }

// copySnapshot copies a pause snapshot (hard links where possible: the
// files are never modified in place) into dir.
func copySnapshot(ctx context.Context, disks DiskMaker, src vmm.Snapshot, dir string) (vmm.Snapshot, error) {
	if err := checkSnapshotFiles(src); err != nil {
		return vmm.Snapshot{}, wrapErr(agenterr.ErrInvalidState, err, "paused sandbox's snapshot")
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return vmm.Snapshot{}, err
	}
	out := src
	out.Dir = dir
	for _, f := range []struct{ from, to *string }{{&src.StatePath, &out.StatePath}, {&src.MemoryPath, &out.MemoryPath}} {
		if *f.from == "" {
			continue
		}
		dst := filepath.Join(dir, filepath.Base(*f.from))
		if err := linkOrCopy(*f.from, dst); err != nil {
			return vmm.Snapshot{}, fmt.Errorf("copy snapshot file: %w", err)
		}
		*f.to = dst
	}
	dst := filepath.Join(dir, "disk")
	f, err := disks.Clone(ctx, src.DiskPath, src.DiskFormat, dst)
	if err != nil {
		return vmm.Snapshot{}, fmt.Errorf("copy snapshot disk: %w", err)
	}
	out.DiskPath, out.DiskFormat = dst, f
	return out, nil
}

func linkOrCopy(src, dst string) error {
	if err := os.Link(src, dst); err == nil {
		return nil
	}
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// dirSize is the disk space used by the files under dir.
func dirSize(dir string) int64 {
	var n int64
	filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			if st, err := d.Info(); err == nil {
				n += allocated(st)
			}
		}
		return nil
	})
	return n
}

// DeleteSnapshot removes a template made on this host: a snapshot template
// or an image flattened from a sandbox (FlattenRootfs). Built images stay.
func (m *Manager) DeleteSnapshot(ctx context.Context, name string) error {
	if err := names.CheckTemplate(name); err != nil {
		return agenterr.Invalid("name", "%v", err)
	}
	dir := m.paths.TemplateDir(name)
	if _, err := os.Stat(filepath.Join(dir, "snapshot", "meta.json")); err != nil && !flattened(dir) {
		if _, derr := os.Stat(dir); derr == nil {
			return errorf(agenterr.ErrInvalidState, "template %q is not a snapshot template", name)
		}
		return errorf(agenterr.ErrNotFound, "snapshot template %q not found", name)
	}
	// Sandboxes made from it have their disks chained on its disk.
	for _, s := range m.all() {
		s.mu.Lock()
		uses := s.rec.Template == name
		id := s.rec.ID
		s.mu.Unlock()
		if uses {
			return errorf(agenterr.ErrInvalidState, "snapshot template %q is in use by sandbox %q", name, id)
		}
	}
	// Move it aside first so a create never sees half a template.
	trash := filepath.Join(m.cfg.Dir, "templates", ".del-"+name+"-"+randomHex(4))
	if err := os.Rename(dir, trash); err != nil {
		return fmt.Errorf("delete snapshot template: %w", err)
	}
	return os.RemoveAll(trash)
}

// FlattenRootfs writes a sandbox's disk, merged with its base, as a
// standalone shrunk image template; the sandbox keeps running.
func (m *Manager) FlattenRootfs(ctx context.Context, id, name string) (*pb.FlattenRootfsResponse, error) {
	var resp *pb.FlattenRootfsResponse
	err := m.withNewTemplate(id, name, func(s *Sandbox, tmp string) error {
		var err error
		resp, err = m.flattenInto(ctx, s, id, name, tmp)
		return err
	})
	if err != nil {
		return nil, err
	}
	return resp, nil
}

// flattenInto writes sandbox s's disk, merged with its base, into tmp as an
// image template.
func (m *Manager) flattenInto(ctx context.Context, s *Sandbox, id, name, tmp string) (*pb.FlattenRootfsResponse, error) {
	s.mu.Lock()
	r := s.rec
	mref, client := s.machine, s.client
	s.mu.Unlock()
	var err error
	src, srcFormat := r.DiskPath, r.DiskFormat
	dst := filepath.Join(tmp, "rootfs.ext4")
	var size int64
	switch {
	case r.State == pb.SandboxState_SANDBOX_STATE_RUNNING && mref != nil:
		// Flush the guest's page cache, then hold the vCPUs still while the
		// disk is read.
		if client != nil {
			m.Exec(ctx, &pb.ExecRequest{SandboxId: id, Cmd: "sync", TimeoutSec: 60})
		}
		if err := mref.m.Pause(ctx); err != nil {
			return nil, wrapErr(kindForVMM(err), err, "pause vm")
		}
		// The VMM holds a lock on its disk: copy it while the vCPUs are
		// stopped (a stopped VMM has flushed it), let the VM go on, and
		// flatten the copy.
		cp := filepath.Join(tmp, "disk.copy")
		var cpFormat string
		cpFormat, err = m.cfg.Disks.Clone(ctx, src, srcFormat, cp)
		if rerr := mref.m.Resume(context.WithoutCancel(ctx)); rerr != nil {
			m.log.Error("flatten: resume vm", "sandbox", id, "err", rerr)
		}
		if err == nil {
			size, err = m.cfg.Disks.Flatten(ctx, cp, cpFormat, dst)
		}
		os.Remove(cp)
	case isPaused(r.State) && r.Snapshot != nil:
		src, srcFormat = r.Snapshot.DiskPath, r.Snapshot.DiskFormat
		size, err = m.cfg.Disks.Flatten(ctx, src, srcFormat, dst)
	default:
		return nil, errorf(agenterr.ErrInvalidState, "sandbox %q is %s: flatten needs a running or paused sandbox", id, stateName(r.State))
	}
	if err != nil {
		return nil, wrapErr(nil, err, "flatten disk")
	}
	meta := images.Metadata{Template: name, RootfsKey: flatKeyPrefix + randomHex(6), RootfsFile: "rootfs.ext4", Format: "raw", SizeBytes: size, BuiltAt: m.cfg.Now()}
	b, _ := json.MarshalIndent(meta, "", "  ")
	if err := atomicfile.WriteFile(filepath.Join(tmp, "metadata.json"), b, 0o644); err != nil {
		return nil, fmt.Errorf("write template metadata: %w", err)
	}
	return &pb.FlattenRootfsResponse{Name: name, SizeBytes: size}, nil
}

// flatKeyPrefix starts the rootfs key of images FlattenRootfs writes.
const flatKeyPrefix = "flat-"

// flattened reports whether dir holds an image FlattenRootfs wrote.
func flattened(dir string) bool {
	b, err := os.ReadFile(filepath.Join(dir, "metadata.json"))
	if err != nil {
		return false
	}
	var md images.Metadata
	return json.Unmarshal(b, &md) == nil && strings.HasPrefix(md.RootfsKey, flatKeyPrefix)
}
