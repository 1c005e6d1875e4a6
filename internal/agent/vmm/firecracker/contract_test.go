package firecracker

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netns"

	"github.com/wrenn-dev/wrenn/internal/agent/vmm"
	"github.com/wrenn-dev/wrenn/internal/testenv"
)

func TestMain(m *testing.M) {
	if fakeMain() {
		return
	}
	os.Exit(m.Run())
}

// testEnv runs the driver against the fake firecracker (this test binary
// re-executed).
type testEnv struct {
	t       testing.TB
	dir     string
	logPath string
	kernel  string
	disk    string
	drv     *Driver
}

type envOpt func(*Options)

func withModes(modes ...string) envOpt {
	return func(o *Options) { o.Env = append(o.Env, fakeModeEnv+"="+strings.Join(modes, ",")) }
}

func withBackend(b MemoryBackend) envOpt {
	return func(o *Options) { o.MemoryBackend = b }
}

func withGrace(d time.Duration) envOpt {
	return func(o *Options) { o.StopGrace = d }
}

func newEnv(t testing.TB, opts ...envOpt) *testEnv {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatalf("test executable: %v", err)
	}
	dir := t.TempDir()
	e := &testEnv{t: t, dir: dir, logPath: filepath.Join(dir, "requests.jsonl")}
	e.kernel = filepath.Join(dir, "vmlinux")
	if err := os.WriteFile(e.kernel, []byte("\x7fELF fake kernel"), 0o644); err != nil {
		t.Fatal(err)
	}
	e.disk = e.makeDisk("base.raw", 16<<20)
	o := Options{
		Binary:          exe,
		Env:             []string{fakeEnv + "=1", fakeLogEnv + "=" + e.logPath},
		UffdHandler:     exe,
		UffdHandlerArgs: []string{"uffd-handler"},
		APITimeout:      5 * time.Second,
		StopGrace:       2 * time.Second,
		Logger:          slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug})),
	}
	for _, f := range opts {
		f(&o)
	}
	e.drv, err = New(o)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return e
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// makeDisk creates a sparse raw disk with recognisable data at 1 MiB.
func (e *testEnv) makeDisk(name string, size int64) string {
	e.t.Helper()
	p := filepath.Join(e.dir, name)
	f, err := os.Create(p)
	if err != nil {
		e.t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		e.t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte("wrenn disk "+name), 1<<20); err != nil {
		e.t.Fatal(err)
	}
	return p
}

func (e *testEnv) config(name string) vmm.Config {
	return vmm.Config{
		ID:         name,
		KernelPath: e.kernel,
		KernelArgs: "console=ttyS0 reboot=k panic=1 pci=off",
		DiskPath:   e.disk,
		DiskFormat: "raw",
		VCPUs:      2,
		MemoryMB:   64,
		TapDevice:  "tap0",
		MAC:        "02:fc:00:00:00:01",
		RunDir:     filepath.Join(e.dir, name, "run"),
	}
}

func (e *testEnv) requests() []logEntry {
	e.t.Helper()
	f, err := os.Open(e.logPath)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		e.t.Fatal(err)
	}
	defer f.Close()
	var out []logEntry
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var le logEntry
		if err := json.Unmarshal(sc.Bytes(), &le); err != nil {
			e.t.Fatalf("bad request log line %q: %v", sc.Text(), err)
		}
		out = append(out, le)
	}
	return out
}

func (e *testEnv) resetLog() {
	// Truncate, not remove: running fakes keep the file open (O_APPEND).
	if err := os.Truncate(e.logPath, 0); err != nil && !errors.Is(err, os.ErrNotExist) {
		e.t.Fatal(err)
	}
}

func (e *testEnv) start(cfg vmm.Config) vmm.Machine {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	m, err := e.drv.Start(ctx, cfg)
	if err != nil {
		e.t.Fatalf("Start: %v", err)
	}
	e.t.Cleanup(func() { _ = m.Stop(context.Background()) })
	return m
}

func ctx10(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// instanceState asks the machine's API for its state (GET /).
func instanceState(t *testing.T, m vmm.Machine) string {
	t.Helper()
	var info instanceInfo
	if err := m.(*machine).call(ctx10(t), "GET", "/", nil, &info); err != nil {
		t.Fatalf("GET /: %v", err)
	}
	return info.State
}

// assertGone checks that pid no longer exists (exited and reaped).
func assertGone(t *testing.T, pid int) {
	t.Helper()
	deadline := time.Now().Add(3 * time.Second)
	for {
		_, err := os.Stat(fmt.Sprintf("/proc/%d", pid))
		if errors.Is(err, os.ErrNotExist) {
			return
		}
		if time.Now().After(deadline) {
			st, _ := readProcStat(pid)
			t.Fatalf("process %d still exists (state %q): leaked or not reaped", pid, st.State)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// procsWithCwd lists processes whose working directory is dir: the fake
// runs with RunDir as cwd, so this finds leaked VMM processes.
func procsWithCwd(t *testing.T, dir string) []int {
	t.Helper()
	ents, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	var pids []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		cwd, err := os.Readlink(fmt.Sprintf("/proc/%d/cwd", pid))
		if err == nil && cwd == dir {
			if st, err := readProcStat(pid); err == nil && st.State != 'Z' {
				pids = append(pids, pid)
			}
		}
	}
	return pids
}

func paths(reqs []logEntry) []string {
	var out []string
	for _, r := range reqs {
		out = append(out, fmt.Sprintf("%s %s %d", r.Method, r.Path, r.Status))
	}
	return out
}

func decodeBody(t *testing.T, reqs []logEntry, method, path string) map[string]any {
	t.Helper()
	for _, r := range reqs {
		if r.Method == method && r.Path == path {
			var m map[string]any
			if err := json.Unmarshal(r.Body, &m); err != nil {
				t.Fatalf("%s %s body %s: %v", method, path, r.Body, err)
			}
			return m
		}
	}
	t.Fatalf("no %s %s request in %v", method, path, paths(reqs))
	return nil
}

func TestStartBootSequence(t *testing.T) {
	e := newEnv(t)
	cfg := e.config("boot")
	m := e.start(cfg)

	reqs := e.requests()
	want := []string{
		"GET /version 200",
		"PUT /machine-config 204",
		"PUT /boot-source 204",
		"PUT /drives/rootfs 204",
		"PUT /network-interfaces/eth0 204",
		"PUT /actions 204",
	}
	if got := paths(reqs); strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("request sequence:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	bodies := []struct {
		method, path string
		want         map[string]any
	}{
		{"PUT", "/machine-config", map[string]any{"vcpu_count": 2.0, "mem_size_mib": 64.0, "smt": false}},
		{"PUT", "/boot-source", map[string]any{"kernel_image_path": cfg.KernelPath, "boot_args": cfg.KernelArgs}},
		{"PUT", "/drives/rootfs", map[string]any{"drive_id": "rootfs", "path_on_host": "rootfs", "is_root_device": true, "is_read_only": false}},
		{"PUT", "/network-interfaces/eth0", map[string]any{"iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": cfg.MAC}},
		{"PUT", "/actions", map[string]any{"action_type": "InstanceStart"}},
	}
	for _, b := range bodies {
		got := decodeBody(t, reqs, b.method, b.path)
		gb, _ := json.Marshal(got)
		wb, _ := json.Marshal(b.want)
		if !bytes.Equal(gb, wb) {
			t.Errorf("%s %s body = %s, want %s", b.method, b.path, gb, wb)
		}
	}

	if st := instanceState(t, m); st != "Running" {
		t.Fatalf("state after boot = %q, want Running", st)
	}
	// The process runs in RunDir, with the disk linked under its relative name.
	cwd, err := os.Readlink(fmt.Sprintf("/proc/%d/cwd", m.PID()))
	if err != nil || cwd != cfg.RunDir {
		t.Fatalf("firecracker cwd = %q (%v), want %q", cwd, err, cfg.RunDir)
	}
	if target, err := os.Readlink(filepath.Join(cfg.RunDir, rootfsName)); err != nil || target != cfg.DiskPath {
		t.Fatalf("rootfs link = %q (%v), want %q", target, err, cfg.DiskPath)
	}
	pidb, err := os.ReadFile(filepath.Join(cfg.RunDir, pidName))
	if err != nil || strings.TrimSpace(string(pidb)) != strconv.Itoa(m.PID()) {
		t.Fatalf("pid file = %q (%v), want %d", pidb, err, m.PID())
	}

	pid := m.PID()
	if err := m.Stop(ctx10(t)); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	assertGone(t, pid)
	select {
	case <-m.Done():
	default:
		t.Fatal("Done not closed after Stop")
	}
	for _, name := range []string{apiSockName, pidName, stateName, rootfsName} {
		if _, err := os.Lstat(filepath.Join(cfg.RunDir, name)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s left in run dir after Stop (err %v)", name, err)
		}
	}
	if _, err := os.Stat(filepath.Join(cfg.RunDir, logName)); err != nil {
		t.Errorf("serial/log file should be kept after Stop: %v", err)
	}
}

func TestStartWithoutNetwork(t *testing.T) {
	e := newEnv(t)
	cfg := e.config("nonet")
	cfg.TapDevice, cfg.MAC = "", ""
	e.start(cfg)
	for _, r := range e.requests() {
		if strings.HasPrefix(r.Path, "/network-interfaces") {
			t.Fatalf("network interface configured without a TAP device: %+v", r)
		}
	}
}

func TestPauseResume(t *testing.T) {
	e := newEnv(t)
	m := e.start(e.config("pause"))
	ctx := ctx10(t)
	steps := []struct {
		name string
		op   func(context.Context) error
		want string
	}{
		{"pause", m.Pause, "Paused"},
		{"pause again (Firecracker keeps it paused)", m.Pause, "Paused"},
		{"resume", m.Resume, "Running"},
		{"resume again", m.Resume, "Running"},
		{"pause after resume", m.Pause, "Paused"},
	}
	for _, s := range steps {
		if err := s.op(ctx); err != nil {
			t.Fatalf("%s: %v", s.name, err)
		}
		if got := instanceState(t, m); got != s.want {
			t.Fatalf("after %s: state %q, want %q", s.name, got, s.want)
		}
	}
	body := decodeBody(t, e.requests(), "PATCH", "/vm")
	if len(body) != 1 || body["state"] != "Paused" {
		t.Fatalf("PATCH /vm body = %v", body)
	}
	// Stopping a paused VM skips SendCtrlAltDel (the guest cannot see it).
	e.resetLog()
	start := time.Now()
	if err := m.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("stopping a paused VM took %v; it should kill at once", d)
	}
	for _, r := range e.requests() {
		if r.Path == "/actions" {
			t.Errorf("SendCtrlAltDel sent to a paused VM: %+v", r)
		}
	}
}

func TestSnapshotRequiresPause(t *testing.T) {
	e := newEnv(t)
	m := e.start(e.config("snaprun"))
	dir := filepath.Join(e.dir, "snap")
	_, err := m.Snapshot(ctx10(t), dir)
	var ae *APIError
	if !errors.As(err, &ae) {
		t.Fatalf("Snapshot of a running VM: err = %v, want an APIError", err)
	}
	if ae.Status != 400 || !strings.Contains(ae.FaultMessage, "paused") {
		t.Fatalf("APIError = %+v, want 400 with Firecracker's reason", ae)
	}
	if !strings.Contains(err.Error(), ae.FaultMessage) {
		t.Fatalf("error text %q does not carry the fault message", err)
	}
	if _, err := os.Stat(filepath.Join(dir, snapMetaName)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("failed snapshot left metadata behind (%v)", err)
	}
	// The VM is untouched and still running.
	if st := instanceState(t, m); st != "Running" {
		t.Fatalf("state = %q after failed snapshot", st)
	}
}

func TestSnapshotAndRestore(t *testing.T) {
	cases := []struct {
		backend MemoryBackend
		tap     string // TAP device of the restored VM
	}{
		{BackendFile, "tap0"},
		{BackendFile, "tap7"},
		{BackendUffd, "tap0"},
		{BackendUffd, "tap9"},
	}
	for _, tc := range cases {
		t.Run(fmt.Sprintf("%s/%s", tc.backend, tc.tap), func(t *testing.T) {
			e := newEnv(t, withBackend(tc.backend))
			cfg := e.config("src")
			m := e.start(cfg)
			ctx := ctx10(t)
			if err := m.Pause(ctx); err != nil {
				t.Fatal(err)
			}
			dir := filepath.Join(e.dir, "snap")
			snap, err := m.Snapshot(ctx, dir)
			if err != nil {
				t.Fatalf("Snapshot: %v", err)
			}
			create := decodeBody(t, e.requests(), "PUT", "/snapshot/create")
			wantCreate := map[string]any{"snapshot_type": "Full", "snapshot_path": snap.StatePath, "mem_file_path": snap.MemoryPath}
			if gb, wb := mustJSON(create), mustJSON(wantCreate); gb != wb {
				t.Fatalf("snapshot/create body = %s, want %s", gb, wb)
			}
			if snap.Driver != Name || snap.VCPUs != 2 || snap.MemoryMB != 64 || snap.DiskFormat != "raw" || snap.Dir != dir {
				t.Fatalf("snapshot = %+v", snap)
			}
			if fi, err := os.Stat(snap.MemoryPath); err != nil || fi.Size() != 64<<20 {
				t.Fatalf("memory file: %v %v", fi, err)
			}
			src, _ := os.ReadFile(cfg.DiskPath)
			cp, err := os.ReadFile(snap.DiskPath)
			if err != nil || !bytes.Equal(src, cp) {
				t.Fatalf("snapshot disk differs from the VM's disk (err %v)", err)
			}
			// The machine stays paused after a snapshot.
			if st := instanceState(t, m); st != "Paused" {
				t.Fatalf("state after snapshot = %q", st)
			}
			// A second snapshot into the same dir writes new files (new
			// inodes): a VM restored from the first may still map them.
			var before, after syscall.Stat_t
			if err := syscall.Stat(snap.MemoryPath, &before); err != nil {
				t.Fatal(err)
			}
			keep, err := os.Open(snap.MemoryPath) // hold the inode, as a mapping would
			if err != nil {
				t.Fatal(err)
			}
			defer keep.Close()
			if snap, err = m.Snapshot(ctx, dir); err != nil {
				t.Fatalf("second Snapshot: %v", err)
			}
			if err := syscall.Stat(snap.MemoryPath, &after); err != nil {
				t.Fatal(err)
			}
			if before.Ino == after.Ino {
				t.Fatal("second snapshot rewrote the memory file in place")
			}
			if err := m.Stop(ctx); err != nil {
				t.Fatal(err)
			}

			// Restore into a new run dir, on a copy of the snapshot's disk.
			e.resetLog()
			rcfg := e.config("dst")
			rcfg.DiskPath = filepath.Join(e.dir, "dst.raw")
			if err := copyDisk(ctx, snap.DiskPath, rcfg.DiskPath); err != nil {
				t.Fatal(err)
			}
			rcfg.TapDevice = tc.tap
			r, err := e.drv.Restore(ctx, rcfg, snap)
			if err != nil {
				t.Fatalf("Restore: %v", err)
			}
			t.Cleanup(func() { _ = r.Stop(context.Background()) })
			reqs := e.requests()
			if got := strings.Join(paths(reqs), "\n"); got != "GET /version 200\nPUT /snapshot/load 204" {
				t.Fatalf("restore requests:\n%s", got)
			}
			load := decodeBody(t, reqs, "PUT", "/snapshot/load")
			wantPath := snap.MemoryPath
			if tc.backend == BackendUffd {
				wantPath = filepath.Join(rcfg.RunDir, uffdSockName)
			}
			wantLoad := map[string]any{
				"snapshot_path": snap.StatePath,
				"mem_backend":   map[string]any{"backend_type": string(tc.backend), "backend_path": wantPath},
				"resume_vm":     true,
			}
			if tc.tap != cfg.TapDevice {
				wantLoad["network_overrides"] = []any{map[string]any{"iface_id": "eth0", "host_dev_name": tc.tap}}
			}
			if gb, wb := mustJSON(load), mustJSON(wantLoad); gb != wb {
				t.Fatalf("snapshot/load body = %s\nwant %s", gb, wb)
			}
			if st := instanceState(t, r); st != "Running" {
				t.Fatalf("restored state = %q, want Running", st)
			}
			rm := r.(*machine)
			if tc.backend == BackendUffd {
				if rm.uffd == nil {
					t.Fatal("no uffd handler process")
				}
				waitForFile(t, filepath.Join(rcfg.RunDir, uffdLogName), "uffd handshake ok: 1 region(s), 67108864 bytes")
			}
			if err := r.Pause(ctx); err != nil {
				t.Fatalf("pause restored VM: %v", err)
			}
			if err := r.Resume(ctx); err != nil {
				t.Fatalf("resume restored VM: %v", err)
			}
			pids := []int{r.PID()}
			if rm.uffd != nil {
				pids = append(pids, rm.uffd.pid)
			}
			if err := r.Stop(ctx); err != nil {
				t.Fatal(err)
			}
			for _, pid := range pids {
				assertGone(t, pid)
			}
		})
	}
}

func mustJSON(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

func waitForFile(t *testing.T, path, substr string) {
	t.Helper()
	deadline := time.Now().Add(3 * time.Second)
	for {
		b, _ := os.ReadFile(path)
		if strings.Contains(string(b), substr) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s does not contain %q; it has:\n%s", path, substr, b)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestRestoreRejectsBadSnapshots(t *testing.T) {
	e := newEnv(t)
	m := e.start(e.config("src"))
	ctx := ctx10(t)
	if err := m.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	good, err := m.Snapshot(ctx, filepath.Join(e.dir, "snap"))
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	corrupt := filepath.Join(e.dir, "corrupt-state")
	if err := os.WriteFile(corrupt, []byte("not a snapshot"), 0o600); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name        string
		mutate      func(*vmm.Snapshot, *vmm.Config)
		invalid     bool   // vmm.ErrSnapshotInvalid, decided before starting a process
		faultSubstr string // else: Firecracker's refusal
	}{
		{"other driver", func(s *vmm.Snapshot, _ *vmm.Config) { s.Driver = "qemu" }, true, ""},
		{"missing memory", func(s *vmm.Snapshot, _ *vmm.Config) { s.MemoryPath = filepath.Join(e.dir, "nope") }, true, ""},
		{"missing state", func(s *vmm.Snapshot, _ *vmm.Config) { s.StatePath = filepath.Join(e.dir, "nope") }, true, ""},
		{"memory size mismatch", func(s *vmm.Snapshot, _ *vmm.Config) { s.MemoryMB = 128 }, true, ""},
		{"config asks other memory", func(_ *vmm.Snapshot, c *vmm.Config) { c.MemoryMB = 256 }, true, ""},
		{"corrupt state file", func(s *vmm.Snapshot, _ *vmm.Config) { s.StatePath = corrupt }, false, "invalid snapshot file"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			snap := good
			cfg := e.config("dst-" + strings.ReplaceAll(tc.name, " ", "-"))
			cfg.DiskPath = good.DiskPath
			tc.mutate(&snap, &cfg)
			r, err := e.drv.Restore(ctx, cfg, snap)
			if err == nil {
				_ = r.Stop(ctx)
				t.Fatal("Restore succeeded")
			}
			if tc.invalid {
				if !errors.Is(err, vmm.ErrSnapshotInvalid) {
					t.Fatalf("err = %v, want ErrSnapshotInvalid", err)
				}
				if _, serr := os.Stat(filepath.Join(cfg.RunDir, logName)); !errors.Is(serr, os.ErrNotExist) {
					t.Fatalf("a process was started for an invalid snapshot")
				}
				return
			}
			var ae *APIError
			if !errors.As(err, &ae) || !strings.Contains(ae.FaultMessage, tc.faultSubstr) {
				t.Fatalf("err = %v, want Firecracker's fault %q", err, tc.faultSubstr)
			}
			if left := procsWithCwd(t, cfg.RunDir); len(left) > 0 {
				t.Fatalf("processes left after failed restore: %v", left)
			}
		})
	}
}

func TestStop(t *testing.T) {
	cases := []struct {
		name    string
		modes   []string
		grace   time.Duration
		minTime time.Duration // Stop must have waited at least this long
		maxTime time.Duration
		ctrlAlt bool
	}{
		{"guest shuts down on ctrl-alt-del", nil, 3 * time.Second, 0, 2 * time.Second, true},
		{"guest ignores ctrl-alt-del, killed after grace", []string{modeIgnoreCtrlAlt}, 400 * time.Millisecond, 400 * time.Millisecond, 3 * time.Second, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, withModes(tc.modes...), withGrace(tc.grace))
			m := e.start(e.config("stop"))
			pid := m.PID()
			e.resetLog()
			start := time.Now()
			if err := m.Stop(ctx10(t)); err != nil {
				t.Fatalf("Stop: %v", err)
			}
			took := time.Since(start)
			if took < tc.minTime || took > tc.maxTime {
				t.Fatalf("Stop took %v, want between %v and %v", took, tc.minTime, tc.maxTime)
			}
			assertGone(t, pid)
			body := decodeBody(t, e.requests(), "PUT", "/actions")
			if body["action_type"] != "SendCtrlAltDel" {
				t.Fatalf("stop action = %v", body)
			}
			// Idempotent.
			if err := m.Stop(ctx10(t)); err != nil {
				t.Fatalf("second Stop: %v", err)
			}
			if err := m.Pause(ctx10(t)); !errors.Is(err, vmm.ErrNotRunning) {
				t.Fatalf("Pause after Stop: %v, want ErrNotRunning", err)
			}
		})
	}
}

func TestAdopt(t *testing.T) {
	e := newEnv(t)
	cfg := e.config("adopt")
	first := e.start(cfg)
	if err := first.Pause(ctx10(t)); err != nil {
		t.Fatal(err)
	}

	// A new driver, as after an agent restart, finds it from RunDir alone.
	drv2, err := New(e.drv.opts)
	if err != nil {
		t.Fatal(err)
	}
	adopted, err := drv2.Adopt(ctx10(t), vmm.Config{ID: cfg.ID, RunDir: cfg.RunDir})
	if err != nil {
		t.Fatalf("Adopt: %v", err)
	}
	if adopted.PID() != first.PID() {
		t.Fatalf("adopted pid %d, want %d", adopted.PID(), first.PID())
	}
	am := adopted.(*machine)
	if !am.paused || am.cfg.MemoryMB != 64 || am.cfg.VCPUs != 2 || am.cfg.TapDevice != "tap0" || am.cfg.DiskPath != cfg.DiskPath {
		t.Fatalf("adopted machine state: paused=%v cfg=%+v", am.paused, am.cfg)
	}
	ctx := ctx10(t)
	// An adopted machine can be snapshotted (it found its disk again).
	snap, err := adopted.Snapshot(ctx, filepath.Join(e.dir, "adopted-snap"))
	if err != nil {
		t.Fatalf("Snapshot adopted: %v", err)
	}
	if _, err := os.Stat(snap.DiskPath); err != nil {
		t.Fatalf("adopted snapshot disk: %v", err)
	}
	if err := adopted.Resume(ctx); err != nil {
		t.Fatalf("Resume adopted: %v", err)
	}
	if m, err := adopted.Metrics(ctx); err != nil || m.RSSBytes == 0 {
		t.Fatalf("Metrics adopted: %+v %v", m, err)
	}
	if err := adopted.Stop(ctx); err != nil {
		t.Fatalf("Stop adopted: %v", err)
	}
	select {
	case <-adopted.Done():
	case <-time.After(3 * time.Second):
		t.Fatal("adopted Done not closed after Stop")
	}
	assertGone(t, first.PID())

	// Nothing left to adopt now.
	if _, err := drv2.Adopt(ctx, vmm.Config{ID: cfg.ID, RunDir: cfg.RunDir}); !errors.Is(err, vmm.ErrNotRunning) {
		t.Fatalf("Adopt after stop: %v, want ErrNotRunning", err)
	}
}

func TestAdoptRejectsStaleState(t *testing.T) {
	e := newEnv(t)
	cases := []struct {
		name  string
		state func(self runState) runState
	}{
		{"dead pid", func(s runState) runState { s.PID = deadPID(t); return s }},
		{"reused pid", func(s runState) runState { s.PID = os.Getpid(); s.StartTime = 1; return s }},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := filepath.Join(e.dir, strings.ReplaceAll(tc.name, " ", "-"))
			if err := os.MkdirAll(dir, 0o755); err != nil {
				t.Fatal(err)
			}
			st := tc.state(runState{VCPUs: 1, MemoryMB: 64})
			b, _ := json.Marshal(st)
			if err := os.WriteFile(filepath.Join(dir, stateName), b, 0o644); err != nil {
				t.Fatal(err)
			}
			_, err := e.drv.Adopt(ctx10(t), vmm.Config{ID: "x", RunDir: dir})
			if !errors.Is(err, vmm.ErrNotRunning) {
				t.Fatalf("Adopt = %v, want ErrNotRunning", err)
			}
		})
	}
}

// deadPID returns the PID of a process that has exited and been reaped.
func deadPID(t *testing.T) int {
	t.Helper()
	p, err := os.StartProcess("/bin/true", []string{"true"}, &os.ProcAttr{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.Wait(); err != nil {
		t.Fatal(err)
	}
	return p.Pid
}

func TestAPIErrorsSurfaced(t *testing.T) {
	e := newEnv(t)
	cases := []struct {
		name   string
		mutate func(*vmm.Config)
		path   string
		fault  string
	}{
		{"too many vCPUs", func(c *vmm.Config) { c.VCPUs = 33 }, "/machine-config", "vCPU number is invalid"},
		{"kernel missing", func(c *vmm.Config) { c.KernelPath = filepath.Join(e.dir, "no-kernel") }, "/boot-source", "kernel file cannot be opened"},
		{"bad MAC", func(c *vmm.Config) { c.MAC = "not-a-mac" }, "/network-interfaces/eth0", "invalid MAC"},
		{"TAP name too long", func(c *vmm.Config) { c.TapDevice = "a-very-long-tap-device-name" }, "/network-interfaces/eth0", "Open tap device failed"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cfg := e.config("err-" + strings.ReplaceAll(tc.name, " ", "-"))
			tc.mutate(&cfg)
			m, err := e.drv.Start(ctx10(t), cfg)
			if err == nil {
				_ = m.Stop(context.Background())
				t.Fatal("Start succeeded")
			}
			var ae *APIError
			if !errors.As(err, &ae) {
				t.Fatalf("err = %v, want an APIError", err)
			}
			if ae.Status != 400 || ae.Path != tc.path || !strings.Contains(ae.FaultMessage, tc.fault) {
				t.Fatalf("APIError = %+v, want 400 on %s with %q", ae, tc.path, tc.fault)
			}
			if !strings.Contains(err.Error(), tc.fault) || !strings.Contains(err.Error(), cfg.ID) {
				t.Fatalf("error text %q lacks the fault or the sandbox", err)
			}
			if left := procsWithCwd(t, cfg.RunDir); len(left) > 0 {
				t.Fatalf("processes left after failed start: %v", left)
			}
			if _, err := os.Lstat(filepath.Join(cfg.RunDir, apiSockName)); !errors.Is(err, os.ErrNotExist) {
				t.Fatalf("API socket left after failed start")
			}
		})
	}
}

func TestConfigRejected(t *testing.T) {
	e := newEnv(t)
	cases := []struct {
		name   string
		mutate func(*vmm.Config)
		want   string
		is     error
	}{
		{"qcow2 disk", func(c *vmm.Config) { c.DiskFormat = "qcow2" }, `DiskFormat "qcow2" is not supported: Firecracker only takes raw`, nil},
		{"no disk format", func(c *vmm.Config) { c.DiskFormat = "" }, "only takes raw", nil},
		{"relative run dir", func(c *vmm.Config) { c.RunDir = "run" }, "RunDir must be an absolute path", nil},
		{"no kernel", func(c *vmm.Config) { c.KernelPath = "" }, "KernelPath is empty", nil},
		{"zero vCPUs", func(c *vmm.Config) { c.VCPUs = 0 }, "VCPUs must be at least 1", nil},
		{"negative memory", func(c *vmm.Config) { c.MemoryMB = -1 }, "MemoryMB must be at least 1", nil},
		{"TCG", func(c *vmm.Config) { c.Accel = vmm.AccelTCG }, "needs KVM", vmm.ErrUnsupported},
		{"disk missing", func(c *vmm.Config) { c.DiskPath = filepath.Join(e.dir, "missing.raw") }, "no such file", nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cfg := e.config("cfg")
			tc.mutate(&cfg)
			m, err := e.drv.Start(ctx10(t), cfg)
			if err == nil {
				_ = m.Stop(context.Background())
				t.Fatal("Start succeeded")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want it to say %q", err, tc.want)
			}
			if tc.is != nil && !errors.Is(err, tc.is) {
				t.Fatalf("err = %v, want errors.Is %v", err, tc.is)
			}
			if len(e.requests()) != 0 {
				t.Fatalf("a firecracker process was contacted for a rejected config")
			}
		})
	}
}

func TestEarlyDeath(t *testing.T) {
	t.Run("dies before API", func(t *testing.T) {
		e := newEnv(t, withModes(modeDieAtStart))
		cfg := e.config("die")
		start := time.Now()
		_, err := e.drv.Start(ctx10(t), cfg)
		if !errors.Is(err, vmm.ErrNotRunning) {
			t.Fatalf("Start = %v, want ErrNotRunning", err)
		}
		if time.Since(start) > 2*time.Second {
			t.Fatalf("early exit detected only after %v", time.Since(start))
		}
		if !strings.Contains(err.Error(), logName) {
			t.Fatalf("error %q does not point at the log", err)
		}
		b, _ := os.ReadFile(filepath.Join(cfg.RunDir, logName))
		if !strings.Contains(string(b), "dying at start") {
			t.Fatalf("log does not hold the process's output: %q", b)
		}
	})
	t.Run("dies after boot", func(t *testing.T) {
		e := newEnv(t, withModes(modeDieAfterBoot))
		m := e.start(e.config("crash"))
		select {
		case <-m.Done():
		case <-time.After(5 * time.Second):
			t.Fatal("Done not closed after the VMM died")
		}
		ctx := ctx10(t)
		if err := m.Pause(ctx); !errors.Is(err, vmm.ErrNotRunning) {
			t.Fatalf("Pause = %v, want ErrNotRunning", err)
		}
		if _, err := m.Metrics(ctx); !errors.Is(err, vmm.ErrNotRunning) {
			t.Fatalf("Metrics = %v, want ErrNotRunning", err)
		}
		if err := m.Stop(ctx); err != nil {
			t.Fatalf("Stop of a dead VM: %v", err)
		}
		assertGone(t, m.PID())
	})
	t.Run("slow API is waited for", func(t *testing.T) {
		e := newEnv(t, withModes(modeSlowAPI))
		e.start(e.config("slow"))
	})
}

func TestMetrics(t *testing.T) {
	e := newEnv(t)
	m := e.start(e.config("metrics"))
	got, err := m.Metrics(ctx10(t))
	if err != nil {
		t.Fatal(err)
	}
	if got.RSSBytes < 1<<20 || got.RSSBytes > 1<<30 {
		t.Fatalf("RSS %d bytes is not plausible for a Go helper process", got.RSSBytes)
	}
	if got.CPUTime < 0 || got.CPUTime > time.Minute {
		t.Fatalf("CPU time %v is not plausible", got.CPUTime)
	}
}

func TestStartInNetNS(t *testing.T) {
	testenv.Require(t, os.Geteuid() == 0, "network namespace test needs root")
	name := fmt.Sprintf("wrenn-fctest-%d", os.Getpid())
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		t.Fatal(err)
	}
	ns, err := netns.NewNamed(name) // switches this thread into it
	if serr := netns.Set(orig); serr != nil {
		t.Fatalf("restore netns: %v", serr) // thread stays locked and dies with the test goroutine
	}
	runtime.UnlockOSThread()
	orig.Close()
	if err != nil {
		t.Fatalf("create netns: %v", err)
	}
	ns.Close()
	t.Cleanup(func() { _ = netns.DeleteNamed(name) })
	nsPath := filepath.Join("/var/run/netns", name)

	e := newEnv(t)
	cfg := e.config("netns")
	cfg.NetNSPath = nsPath
	m := e.start(cfg)

	var want, child, self syscall.Stat_t
	if err := syscall.Stat(nsPath, &want); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Stat(fmt.Sprintf("/proc/%d/ns/net", m.PID()), &child); err != nil {
		t.Fatal(err)
	}
	if child.Ino != want.Ino {
		t.Fatalf("firecracker runs in netns inode %d, want %d", child.Ino, want.Ino)
	}
	// The agent's own threads stay where they were.
	if err := syscall.Stat("/proc/self/ns/net", &self); err != nil {
		t.Fatal(err)
	}
	if self.Ino == want.Ino {
		t.Fatal("the test process itself ended up in the sandbox namespace")
	}

	bad := e.config("badns")
	bad.NetNSPath = "/var/run/netns/does-not-exist-wrenn"
	if _, err := e.drv.Start(ctx10(t), bad); err == nil || !strings.Contains(err.Error(), "network namespace") {
		t.Fatalf("Start with a missing netns: %v", err)
	}
}

func TestNewOptions(t *testing.T) {
	exe, _ := os.Executable()
	cases := []struct {
		name string
		opts Options
		want string
	}{
		{"missing binary", Options{Binary: "/nonexistent/firecracker"}, "firecracker binary /nonexistent/firecracker"},
		{"uffd without handler", Options{Binary: exe, MemoryBackend: BackendUffd}, "needs a UffdHandler"},
		{"unknown backend", Options{Binary: exe, MemoryBackend: "Tape"}, `unknown memory backend "Tape"`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := New(tc.opts); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("New = %v, want error with %q", err, tc.want)
			}
		})
	}
}

// runAgentStart plays an agent that starts a VM and exits without
// stopping it: `agent-start RUNDIR KERNEL DISK`.
func runAgentStart(args []string) int {
	if len(args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: agent-start RUNDIR KERNEL DISK")
		return 2
	}
	exe, err := os.Executable()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	drv, err := New(Options{Binary: exe, Env: []string{fakeEnv + "=1"}})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	m, err := drv.Start(ctx, vmm.Config{
		ID: "orphan", KernelPath: args[1], DiskPath: args[2], DiskFormat: "raw",
		VCPUs: 1, MemoryMB: 32, RunDir: args[0],
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	fmt.Println(m.PID())
	return 0
}

// TestAdoptAfterAgentExit: the agent that started the VM exits; the VM
// keeps running (own process group, log file instead of pipes) and a new
// agent adopts, controls and stops it.
func TestAdoptAfterAgentExit(t *testing.T) {
	e := newEnv(t)
	exe, _ := os.Executable()
	runDir := filepath.Join(e.dir, "orphan", "run")
	cmd := exec.Command(exe, "agent-start", runDir, e.kernel, e.disk)
	cmd.Env = append(os.Environ(), fakeEnv+"=1")
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("first agent: %v (%s)", err, out)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(out)))
	if err != nil {
		t.Fatalf("first agent output %q", out)
	}
	t.Cleanup(func() { _ = syscall.Kill(pid, syscall.SIGKILL) })
	st, err := readProcStat(pid)
	if err != nil || st.State == 'Z' {
		t.Fatalf("VM did not survive its agent: %+v %v", st, err)
	}
	m, err := e.drv.Adopt(ctx10(t), vmm.Config{ID: "orphan", RunDir: runDir})
	if err != nil {
		t.Fatalf("Adopt: %v", err)
	}
	if m.PID() != pid {
		t.Fatalf("adopted pid %d, want %d", m.PID(), pid)
	}
	ctx := ctx10(t)
	if err := m.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	if st := instanceState(t, m); st != "Paused" {
		t.Fatalf("state %q", st)
	}
	if err := m.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	select {
	case <-m.Done():
	default:
		t.Fatal("Done not closed after Stop of an adopted VM")
	}
	// Not our child: init reaps it. It must at least be dead.
	deadline := time.Now().Add(3 * time.Second)
	for {
		st, err := readProcStat(pid)
		if err != nil || st.State == 'Z' || st.State == 'X' {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("adopted VM %d still alive after Stop (state %q)", pid, st.State)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestStartCancelled(t *testing.T) {
	e := newEnv(t, withModes(modeSlowAPI))
	cfg := e.config("cancel")
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	_, err := e.drv.Start(ctx, cfg)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Start = %v, want DeadlineExceeded", err)
	}
	if left := procsWithCwd(t, cfg.RunDir); len(left) > 0 {
		t.Fatalf("processes left after cancelled start: %v", left)
	}
}
