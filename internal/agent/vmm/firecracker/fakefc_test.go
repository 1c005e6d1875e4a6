package firecracker

// A stand-in for the firecracker binary, for contract tests on a machine
// where Firecracker cannot run. The test binary re-executes itself with
// WRENN_FAKEFC=1: with `--api-sock PATH` it serves Firecracker's API on
// that Unix socket, with `uffd-handler SOCK MEM` it plays a userfaultfd
// page-fault handler's side of the handshake.
//
// The fake checks requests the way Firecracker v1.10+ does (swagger
// firecracker.yaml, docs/snapshotting/snapshot-support.md and the API
// server's parsing): methods and paths, JSON bodies with unknown fields
// rejected, required fields, types and enums, and the pre-boot / post-boot
// state machine. Errors are HTTP 400 with {"fault_message": "..."} like
// Firecracker's; the messages reuse Firecracker's wording where it is
// documented and paraphrase it elsewhere. Where Wrenn needs more than
// Firecracker enforces (a root drive and an explicit machine-config before
// InstanceStart) the fake is stricter and says so in its message.

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

const (
	fakeEnv     = "WRENN_FAKEFC"      // "1" in helper processes
	fakeLogEnv  = "WRENN_FAKEFC_LOG"  // request log, one JSON object a line
	fakeModeEnv = "WRENN_FAKEFC_MODE" // comma-separated behaviours, see fakeModes
	fakeVersion = "1.10.1"
	fakeMagic   = "wrenn-fakefc-snapshot-v1"
)

// Behaviours selectable through WRENN_FAKEFC_MODE.
const (
	modeDieAtStart    = "die-at-start"      // exit before opening the socket
	modeDieAfterBoot  = "die-after-boot"    // exit 300 ms after InstanceStart (guest crash)
	modeIgnoreCtrlAlt = "ignore-ctrlaltdel" // guest ignores the key press
	modeSlowAPI       = "slow-api"          // wait 300 ms before listening
)

// fakeMain is called from TestMain; it returns false when this process is
// a normal test run.
func fakeMain() bool {
	if os.Getenv(fakeEnv) != "1" || len(os.Args) < 2 {
		return false
	}
	switch os.Args[1] {
	case "--api-sock":
		os.Exit(runFakeFirecracker(os.Args[1:]))
	case "uffd-handler":
		os.Exit(runFakeUffdHandler(os.Args[2:]))
	case "agent-start":
		os.Exit(runAgentStart(os.Args[2:]))
	}
	fmt.Fprintf(os.Stderr, "fakefc: unknown role %q\n", os.Args[1])
	os.Exit(2)
	return true
}

type fakeModes map[string]bool

func parseModes(s string) fakeModes {
	m := fakeModes{}
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			m[f] = true
		}
	}
	return m
}

// logEntry is one request as the fake saw it.
type logEntry struct {
	Method string          `json:"method"`
	Path   string          `json:"path"`
	Body   json.RawMessage `json:"body,omitempty"`
	Status int             `json:"status"`
	Fault  string          `json:"fault,omitempty"`
}

// Decoding targets: pointers tell "absent" from "zero".
type fBootSource struct {
	KernelImagePath *string `json:"kernel_image_path"`
	BootArgs        *string `json:"boot_args"`
	InitrdPath      *string `json:"initrd_path"`
}

type fTokenBucket struct {
	Size         *int64 `json:"size"`
	OneTimeBurst *int64 `json:"one_time_burst"`
	RefillTime   *int64 `json:"refill_time"`
}

type fRateLimiter struct {
	Bandwidth *fTokenBucket `json:"bandwidth"`
	Ops       *fTokenBucket `json:"ops"`
}

type fDrive struct {
	DriveID      *string       `json:"drive_id"`
	PathOnHost   *string       `json:"path_on_host"`
	IsRootDevice *bool         `json:"is_root_device"`
	IsReadOnly   *bool         `json:"is_read_only"`
	PartUUID     *string       `json:"partuuid"`
	CacheType    *string       `json:"cache_type"`
	IOEngine     *string       `json:"io_engine"`
	RateLimiter  *fRateLimiter `json:"rate_limiter"`
	Socket       *string       `json:"socket"`
}

type fNet struct {
	IfaceID       *string       `json:"iface_id"`
	HostDevName   *string       `json:"host_dev_name"`
	GuestMAC      *string       `json:"guest_mac"`
	RxRateLimiter *fRateLimiter `json:"rx_rate_limiter"`
	TxRateLimiter *fRateLimiter `json:"tx_rate_limiter"`
}

type fMachine struct {
	VCPUCount       *int    `json:"vcpu_count"`
	MemSizeMiB      *int    `json:"mem_size_mib"`
	SMT             *bool   `json:"smt"`
	TrackDirtyPages *bool   `json:"track_dirty_pages"`
	CPUTemplate     *string `json:"cpu_template"`
	HugePages       *string `json:"huge_pages"`
}

type fAction struct {
	ActionType *string `json:"action_type"`
}

type fVM struct {
	State *string `json:"state"`
}

type fSnapCreate struct {
	SnapshotType *string `json:"snapshot_type"`
	SnapshotPath *string `json:"snapshot_path"`
	MemFilePath  *string `json:"mem_file_path"`
}

type fMemBackend struct {
	BackendType *string `json:"backend_type"`
	BackendPath *string `json:"backend_path"`
}

type fNetOverride struct {
	IfaceID     *string `json:"iface_id"`
	HostDevName *string `json:"host_dev_name"`
}

type fSnapLoad struct {
	SnapshotPath        *string        `json:"snapshot_path"`
	MemFilePath         *string        `json:"mem_file_path"`
	MemBackend          *fMemBackend   `json:"mem_backend"`
	EnableDiffSnapshots *bool          `json:"enable_diff_snapshots"`
	TrackDirtyPages     *bool          `json:"track_dirty_pages"`
	ResumeVM            *bool          `json:"resume_vm"`
	NetworkOverrides    []fNetOverride `json:"network_overrides"`
	ClockRealtime       *bool          `json:"clock_realtime"`
}

// fakeSnapshot is what the fake writes as a "microVM state" file.
type fakeSnapshot struct {
	Magic    string            `json:"magic"`
	VCPUs    int               `json:"vcpus"`
	MemMiB   int               `json:"mem_mib"`
	Drives   map[string]string `json:"drives"` // drive_id -> path_on_host as given
	Ifaces   map[string]string `json:"ifaces"` // iface_id -> host_dev_name
	BootArgs string            `json:"boot_args"`
}

type fakeVM struct {
	mu     sync.Mutex
	id     string
	modes  fakeModes
	logF   *os.File
	exitAt func(code int, after time.Duration)

	configured bool // a boot-specific resource was set
	started    bool
	paused     bool

	machineSet bool
	vcpus      int
	memMiB     int
	trackDirty bool
	kernel     string
	bootArgs   string
	drives     map[string]fDrive
	ifaces     map[string]fNet
}

type faultErr struct {
	status int
	msg    string
}

func (f *faultErr) Error() string { return f.msg }

func fault(format string, a ...any) error {
	return &faultErr{status: http.StatusBadRequest, msg: fmt.Sprintf(format, a...)}
}

const (
	msgPostBoot = "The requested operation is not supported after starting the microVM."
	msgPreBoot  = "The requested operation is not supported before starting the microVM."
)

var (
	idRe  = regexp.MustCompile(`^[A-Za-z0-9_]+$`)
	macRe = regexp.MustCompile(`^[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){5}$`)
)

func runFakeFirecracker(args []string) int {
	var sock, id string
	for i := 0; i < len(args); i++ {
		switch args[i] {
		case "--api-sock":
			if i+1 >= len(args) {
				fmt.Fprintln(os.Stderr, "fakefc: --api-sock needs a value")
				return 1
			}
			sock = args[i+1]
			i++
		case "--id":
			if i+1 >= len(args) {
				fmt.Fprintln(os.Stderr, "fakefc: --id needs a value")
				return 1
			}
			id = args[i+1]
			i++
			if !regexp.MustCompile(`^[A-Za-z0-9-]{1,64}$`).MatchString(id) {
				fmt.Fprintf(os.Stderr, "fakefc: invalid instance id %q\n", id)
				return 1
			}
		default:
			fmt.Fprintf(os.Stderr, "fakefc: unknown argument %q\n", args[i])
			return 1
		}
	}
	if id == "" {
		id = "anonymous-instance"
	}
	modes := parseModes(os.Getenv(fakeModeEnv))
	if modes[modeDieAtStart] {
		fmt.Fprintln(os.Stderr, "fakefc: dying at start as asked")
		return 3
	}
	if modes[modeSlowAPI] {
		time.Sleep(300 * time.Millisecond)
	}
	// Firecracker refuses an existing socket path.
	ln, err := net.Listen("unix", sock)
	if err != nil {
		fmt.Fprintf(os.Stderr, "fakefc: Failed to open the API socket at %s: %v\n", sock, err)
		return 1
	}
	vm := &fakeVM{id: id, modes: modes, drives: map[string]fDrive{}, ifaces: map[string]fNet{}}
	if p := os.Getenv(fakeLogEnv); p != "" {
		vm.logF, err = os.OpenFile(p, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
		if err != nil {
			fmt.Fprintf(os.Stderr, "fakefc: open log: %v\n", err)
			return 1
		}
	}
	exitc := make(chan int, 1)
	vm.exitAt = func(code int, after time.Duration) {
		time.AfterFunc(after, func() {
			select {
			case exitc <- code:
			default:
			}
		})
	}
	srv := &http.Server{Handler: vm, ReadHeaderTimeout: 5 * time.Second}
	go srv.Serve(ln)
	fmt.Fprintf(os.Stdout, "fakefc %s: serving on %s as %s\n", fakeVersion, sock, id)
	code := <-exitc
	ln.Close()
	os.Remove(sock)
	fmt.Fprintf(os.Stdout, "fakefc: exiting with %d\n", code)
	return code
}

func (vm *fakeVM) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	vm.mu.Lock()
	status, out, err := vm.route(r.Method, r.URL.Path, body)
	entry := logEntry{Method: r.Method, Path: r.URL.Path, Status: status}
	if json.Valid(body) {
		entry.Body = json.RawMessage(body)
	}
	var fe *faultErr
	if errors.As(err, &fe) {
		entry.Status, entry.Fault = fe.status, fe.msg
	}
	if vm.logF != nil {
		b, _ := json.Marshal(entry)
		vm.logF.Write(append(b, '\n'))
	}
	vm.mu.Unlock()

	w.Header().Set("Content-Type", "application/json")
	switch {
	case fe != nil:
		w.WriteHeader(fe.status)
		b, _ := json.Marshal(map[string]string{"fault_message": fe.msg})
		w.Write(b)
	case out != nil:
		w.WriteHeader(status)
		b, _ := json.Marshal(out)
		w.Write(b)
	default:
		w.WriteHeader(status)
	}
}

// decodeStrict mimics serde with deny_unknown_fields.
func decodeStrict(body []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fault("An error occurred when deserializing the json body of a request: %v.", err)
	}
	if dec.More() {
		return fault("An error occurred when deserializing the json body of a request: trailing characters.")
	}
	return nil
}

func missing(field string) error {
	return fault("An error occurred when deserializing the json body of a request: missing field `%s`.", field)
}

func checkID(id string) error {
	if id == "" {
		return fault("The ID cannot be empty.")
	}
	if !idRe.MatchString(id) {
		return fault("API Resource IDs can only contain alphanumeric characters and underscores.")
	}
	return nil
}

func (vm *fakeVM) state() string {
	switch {
	case !vm.started:
		return "Not started"
	case vm.paused:
		return "Paused"
	default:
		return "Running"
	}
}

func (vm *fakeVM) route(method, path string, body []byte) (int, any, error) {
	tokens := strings.Split(strings.Trim(path, "/"), "/")
	top := tokens[0]
	sub := ""
	if len(tokens) > 1 {
		sub = tokens[1]
	}
	hasBody := len(bytes.TrimSpace(body)) > 0
	switch method {
	case http.MethodGet:
		if hasBody {
			return 0, nil, fault("GET request cannot have a body.")
		}
		switch {
		case path == "/":
			return 200, map[string]string{"app_name": "Firecracker", "id": vm.id, "state": vm.state(), "vmm_version": fakeVersion}, nil
		case top == "version" && len(tokens) == 1:
			return 200, map[string]string{"firecracker_version": fakeVersion}, nil
		case top == "machine-config" && len(tokens) == 1:
			v, m := vm.vcpus, vm.memMiB
			if !vm.machineSet {
				v, m = 1, 128
			}
			return 200, map[string]any{"vcpu_count": v, "mem_size_mib": m, "smt": false, "track_dirty_pages": vm.trackDirty, "huge_pages": "None"}, nil
		}
	case http.MethodPut:
		if !hasBody {
			return 0, nil, fault("Empty PUT request.")
		}
		switch top {
		case "actions":
			return vm.putAction(body)
		case "boot-source":
			return vm.putBootSource(body)
		case "drives":
			return vm.putDrive(sub, body)
		case "network-interfaces":
			return vm.putNet(sub, body)
		case "machine-config":
			return vm.putMachine(body)
		case "snapshot":
			switch sub {
			case "create":
				return vm.snapCreate(body)
			case "load":
				return vm.snapLoad(body)
			case "":
				return 0, nil, fault("Missing snapshot operation type.")
			}
		}
	case http.MethodPatch:
		if !hasBody {
			return 0, nil, fault("Empty PATCH request.")
		}
		if top == "vm" && len(tokens) == 1 {
			return vm.patchVM(body)
		}
	}
	return 0, nil, fault("Invalid request method and/or path: %s %s.", method, strings.TrimPrefix(path, "/"))
}

func (vm *fakeVM) putAction(body []byte) (int, any, error) {
	var a fAction
	if err := decodeStrict(body, &a); err != nil {
		return 0, nil, err
	}
	if a.ActionType == nil {
		return 0, nil, missing("action_type")
	}
	switch *a.ActionType {
	case "InstanceStart":
		if vm.started {
			return 0, nil, fault(msgPostBoot)
		}
		if vm.kernel == "" {
			return 0, nil, fault("Cannot start microvm without kernel configuration.")
		}
		if !vm.machineSet {
			return 0, nil, fault("fake: Wrenn requires an explicit machine-config before InstanceStart (Firecracker itself would default to 1 vCPU, 128 MiB).")
		}
		root := false
		for _, d := range vm.drives {
			root = root || *d.IsRootDevice
		}
		if !root {
			return 0, nil, fault("fake: Wrenn requires a root drive before InstanceStart.")
		}
		vm.started = true
		if vm.modes[modeDieAfterBoot] {
			vm.exitAt(1, 300*time.Millisecond)
		}
		return 204, nil, nil
	case "SendCtrlAltDel":
		if !vm.started {
			return 0, nil, fault(msgPreBoot)
		}
		// reboot=k: the guest's reboot makes Firecracker exit.
		if !vm.paused && !vm.modes[modeIgnoreCtrlAlt] {
			vm.exitAt(0, 50*time.Millisecond)
		}
		return 204, nil, nil
	case "FlushMetrics":
		return 0, nil, fault("The metrics system was not initialized.")
	}
	return 0, nil, fault("An error occurred when deserializing the json body of a request: unknown variant `%s`, expected one of `FlushMetrics`, `InstanceStart`, `SendCtrlAltDel`.", *a.ActionType)
}

func (vm *fakeVM) preBoot() error {
	if vm.started {
		return fault(msgPostBoot)
	}
	return nil
}

func (vm *fakeVM) putBootSource(body []byte) (int, any, error) {
	var b fBootSource
	if err := decodeStrict(body, &b); err != nil {
		return 0, nil, err
	}
	if b.KernelImagePath == nil {
		return 0, nil, missing("kernel_image_path")
	}
	if err := vm.preBoot(); err != nil {
		return 0, nil, err
	}
	if _, err := os.Stat(*b.KernelImagePath); err != nil {
		return 0, nil, fault("The kernel file cannot be opened: %v", err)
	}
	if b.InitrdPath != nil {
		if _, err := os.Stat(*b.InitrdPath); err != nil {
			return 0, nil, fault("The initrd file cannot be opened due to invalid path or invalid permissions. %v", err)
		}
	}
	vm.kernel = *b.KernelImagePath
	if b.BootArgs != nil {
		vm.bootArgs = *b.BootArgs
	}
	vm.configured = true
	return 204, nil, nil
}

func (vm *fakeVM) putDrive(id string, body []byte) (int, any, error) {
	if err := checkID(id); err != nil {
		return 0, nil, err
	}
	var d fDrive
	if err := decodeStrict(body, &d); err != nil {
		return 0, nil, err
	}
	switch {
	case d.DriveID == nil:
		return 0, nil, missing("drive_id")
	case d.IsRootDevice == nil:
		return 0, nil, missing("is_root_device")
	case *d.DriveID != id:
		return 0, nil, fault("The id from the path does not match the id from the body!")
	}
	if d.Socket != nil {
		return 0, nil, fault("fake: vhost-user-block drives are not modelled")
	}
	if d.PathOnHost == nil {
		return 0, nil, missing("path_on_host")
	}
	if d.IsReadOnly == nil {
		return 0, nil, missing("is_read_only")
	}
	if d.CacheType != nil && *d.CacheType != "Unsafe" && *d.CacheType != "Writeback" {
		return 0, nil, fault("An error occurred when deserializing the json body of a request: unknown variant `%s`, expected `Unsafe` or `Writeback`.", *d.CacheType)
	}
	if d.IOEngine != nil && *d.IOEngine != "Sync" && *d.IOEngine != "Async" {
		return 0, nil, fault("An error occurred when deserializing the json body of a request: unknown variant `%s`, expected `Sync` or `Async`.", *d.IOEngine)
	}
	if err := vm.preBoot(); err != nil {
		return 0, nil, err
	}
	if *d.IsRootDevice {
		for other, od := range vm.drives {
			if other != id && *od.IsRootDevice {
				return 0, nil, fault("A root block device already exists!")
			}
		}
	}
	// Relative paths resolve against the process's working directory.
	if _, err := os.Stat(*d.PathOnHost); err != nil {
		return 0, nil, fault("Unable to create the block device: %v", err)
	}
	vm.drives[id] = d
	vm.configured = true
	return 204, nil, nil
}

func (vm *fakeVM) putNet(id string, body []byte) (int, any, error) {
	if err := checkID(id); err != nil {
		return 0, nil, err
	}
	var n fNet
	if err := decodeStrict(body, &n); err != nil {
		return 0, nil, err
	}
	switch {
	case n.IfaceID == nil:
		return 0, nil, missing("iface_id")
	case n.HostDevName == nil:
		return 0, nil, missing("host_dev_name")
	case *n.IfaceID != id:
		return 0, nil, fault("The id from the path does not match the id from the body!")
	}
	if n.GuestMAC != nil && !macRe.MatchString(*n.GuestMAC) {
		return 0, nil, fault("An error occurred when deserializing the json body of a request: invalid MAC address %q.", *n.GuestMAC)
	}
	if *n.HostDevName == "" || len(*n.HostDevName) > 15 {
		return 0, nil, fault("Could not create the network device: Open tap device failed: invalid name %q", *n.HostDevName)
	}
	if err := vm.preBoot(); err != nil {
		return 0, nil, err
	}
	for other, on := range vm.ifaces {
		if other != id && *on.HostDevName == *n.HostDevName {
			return 0, nil, fault("The host device name %s is already in use.", *n.HostDevName)
		}
	}
	vm.ifaces[id] = n
	vm.configured = true
	return 204, nil, nil
}

func (vm *fakeVM) putMachine(body []byte) (int, any, error) {
	var m fMachine
	if err := decodeStrict(body, &m); err != nil {
		return 0, nil, err
	}
	switch {
	case m.VCPUCount == nil:
		return 0, nil, missing("vcpu_count")
	case m.MemSizeMiB == nil:
		return 0, nil, missing("mem_size_mib")
	}
	if err := vm.preBoot(); err != nil {
		return 0, nil, err
	}
	smt := m.SMT != nil && *m.SMT
	if *m.VCPUCount < 1 || *m.VCPUCount > 32 || (smt && *m.VCPUCount > 1 && *m.VCPUCount%2 == 1) {
		return 0, nil, fault("The vCPU number is invalid! The vCPU number can only be 1 or an even number when SMT is enabled.")
	}
	if *m.MemSizeMiB < 1 {
		return 0, nil, fault("The memory size (MiB) is invalid.")
	}
	if m.HugePages != nil && *m.HugePages != "None" && *m.HugePages != "2M" && *m.HugePages != "Transparent" {
		return 0, nil, fault("An error occurred when deserializing the json body of a request: unknown variant `%s`.", *m.HugePages)
	}
	vm.machineSet, vm.vcpus, vm.memMiB = true, *m.VCPUCount, *m.MemSizeMiB
	vm.trackDirty = m.TrackDirtyPages != nil && *m.TrackDirtyPages
	vm.configured = true
	return 204, nil, nil
}

func (vm *fakeVM) patchVM(body []byte) (int, any, error) {
	var v fVM
	if err := decodeStrict(body, &v); err != nil {
		return 0, nil, err
	}
	if v.State == nil {
		return 0, nil, missing("state")
	}
	if *v.State != "Paused" && *v.State != "Resumed" {
		return 0, nil, fault("An error occurred when deserializing the json body of a request: unknown variant `%s`, expected `Paused` or `Resumed`.", *v.State)
	}
	if !vm.started {
		return 0, nil, fault(msgPreBoot)
	}
	// Documented: successive Pause (or Resume) calls keep the state.
	vm.paused = *v.State == "Paused"
	return 204, nil, nil
}

func (vm *fakeVM) snapCreate(body []byte) (int, any, error) {
	var c fSnapCreate
	if err := decodeStrict(body, &c); err != nil {
		return 0, nil, err
	}
	switch {
	case c.SnapshotPath == nil:
		return 0, nil, missing("snapshot_path")
	case c.MemFilePath == nil:
		return 0, nil, missing("mem_file_path")
	}
	typ := "Full"
	if c.SnapshotType != nil {
		typ = *c.SnapshotType
	}
	if typ != "Full" && typ != "Diff" {
		return 0, nil, fault("An error occurred when deserializing the json body of a request: unknown variant `%s`, expected `Full` or `Diff`.", typ)
	}
	if !vm.started {
		return 0, nil, fault(msgPreBoot)
	}
	if !vm.paused {
		return 0, nil, fault("Cannot create snapshot: the microVM must be paused (state is Running).")
	}
	if typ == "Diff" && !vm.trackDirty {
		return 0, nil, fault("Cannot create diff snapshot: dirty page tracking is not enabled.")
	}
	st := fakeSnapshot{Magic: fakeMagic, VCPUs: vm.vcpus, MemMiB: vm.memMiB, Drives: map[string]string{}, Ifaces: map[string]string{}, BootArgs: vm.bootArgs}
	for id, d := range vm.drives {
		st.Drives[id] = *d.PathOnHost
	}
	for id, n := range vm.ifaces {
		st.Ifaces[id] = *n.HostDevName
	}
	b, _ := json.Marshal(st)
	if err := os.WriteFile(*c.SnapshotPath, b, 0o600); err != nil {
		return 0, nil, fault("Cannot save the microVM state: %v", err)
	}
	mf, err := os.OpenFile(*c.MemFilePath, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return 0, nil, fault("Cannot write memory file: %v", err)
	}
	defer mf.Close()
	// Sparse file of guest size, with a marker at the start.
	if err := mf.Truncate(int64(vm.memMiB) << 20); err != nil {
		return 0, nil, fault("Cannot write memory file: %v", err)
	}
	if _, err := mf.WriteAt([]byte(fakeMagic), 0); err != nil {
		return 0, nil, fault("Cannot write memory file: %v", err)
	}
	return 204, nil, nil
}

func (vm *fakeVM) snapLoad(body []byte) (int, any, error) {
	var l fSnapLoad
	if err := decodeStrict(body, &l); err != nil {
		return 0, nil, err
	}
	if l.SnapshotPath == nil {
		return 0, nil, missing("snapshot_path")
	}
	switch {
	case l.MemBackend != nil && l.MemFilePath != nil:
		return 0, nil, fault("An error occurred when deserializing the json body of a request: too many fields: either `mem_backend` or `mem_file_path` exclusively is required.")
	case l.MemBackend == nil && l.MemFilePath == nil:
		return 0, nil, fault("An error occurred when deserializing the json body of a request: missing field: either `mem_backend` or `mem_file_path` is required.")
	}
	backendType, backendPath := "File", ""
	if l.MemFilePath != nil {
		backendPath = *l.MemFilePath
	} else {
		switch {
		case l.MemBackend.BackendType == nil:
			return 0, nil, missing("backend_type")
		case l.MemBackend.BackendPath == nil:
			return 0, nil, missing("backend_path")
		}
		backendType, backendPath = *l.MemBackend.BackendType, *l.MemBackend.BackendPath
		if backendType != "File" && backendType != "Uffd" {
			return 0, nil, fault("An error occurred when deserializing the json body of a request: unknown variant `%s`, expected `File` or `Uffd`.", backendType)
		}
	}
	for _, o := range l.NetworkOverrides {
		if o.IfaceID == nil {
			return 0, nil, missing("iface_id")
		}
		if o.HostDevName == nil {
			return 0, nil, missing("host_dev_name")
		}
	}
	if vm.started {
		return 0, nil, fault(msgPostBoot)
	}
	if vm.configured {
		return 0, nil, fault("Loading a microVM snapshot not allowed after configuring boot-specific resources.")
	}
	// From here a failure ends the process, as Firecracker documents.
	if err := vm.restore(*l.SnapshotPath, backendType, backendPath, l.NetworkOverrides); err != nil {
		vm.exitAt(1, 50*time.Millisecond)
		return 0, nil, err
	}
	vm.started = true
	vm.paused = l.ResumeVM == nil || !*l.ResumeVM
	return 204, nil, nil
}

func (vm *fakeVM) restore(statePath, backendType, backendPath string, overrides []fNetOverride) error {
	raw, err := os.ReadFile(statePath)
	if err != nil {
		return fault("Load snapshot error: Failed to restore from snapshot: Failed to open snapshot file: %v", err)
	}
	var st fakeSnapshot
	if err := json.Unmarshal(raw, &st); err != nil || st.Magic != fakeMagic {
		return fault("Load snapshot error: Failed to restore from snapshot: Failed to load microVM state: invalid snapshot file")
	}
	memSize := int64(st.MemMiB) << 20
	for _, o := range overrides {
		if _, ok := st.Ifaces[*o.IfaceID]; !ok {
			return fault("Load snapshot error: Failed to restore from snapshot: Invalid network override: no interface %q in the snapshot", *o.IfaceID)
		}
		st.Ifaces[*o.IfaceID] = *o.HostDevName
	}
	// Disks are reopened at the paths recorded at snapshot time, relative
	// to this process's working directory.
	for id, p := range st.Drives {
		if _, err := os.Stat(p); err != nil {
			return fault("Load snapshot error: Failed to restore from snapshot: Failed to restore block device %s: %v", id, err)
		}
	}
	switch backendType {
	case "File":
		fi, err := os.Stat(backendPath)
		if err != nil {
			return fault("Load snapshot error: Failed to restore from snapshot: Failed to load guest memory: %v", err)
		}
		if fi.Size() != memSize {
			return fault("Load snapshot error: Failed to restore from snapshot: Failed to load guest memory: file size %d does not match the snapshot's %d", fi.Size(), memSize)
		}
	case "Uffd":
		if err := uffdHandshake(backendPath, memSize); err != nil {
			return fault("Load snapshot error: Failed to restore from snapshot: Failed to load guest memory: %v", err)
		}
	}
	vm.vcpus, vm.memMiB, vm.machineSet = st.VCPUs, st.MemMiB, true
	vm.bootArgs = st.BootArgs
	vm.ifaces = map[string]fNet{}
	for id, dev := range st.Ifaces {
		id, dev := id, dev
		vm.ifaces[id] = fNet{IfaceID: &id, HostDevName: &dev}
	}
	return nil
}

// uffdRegion is the handshake JSON Firecracker sends to a uffd handler.
type uffdRegion struct {
	BaseHostVirtAddr uint64 `json:"base_host_virt_addr"`
	Size             uint64 `json:"size"`
	Offset           uint64 `json:"offset"`
	PageSize         uint64 `json:"page_size"`
	PageSizeKiB      uint64 `json:"page_size_kib"`
}

// uffdHandshake connects to the handler and sends the guest memory layout
// with a file descriptor (a memfd here, the userfaultfd in Firecracker).
func uffdHandshake(sock string, memSize int64) error {
	conn, err := net.DialTimeout("unix", sock, 2*time.Second)
	if err != nil {
		return fmt.Errorf("connect to uffd handler: %w", err)
	}
	defer conn.Close()
	fd, err := unix.MemfdCreate("fakefc-uffd", 0)
	if err != nil {
		return fmt.Errorf("memfd: %w", err)
	}
	defer unix.Close(fd)
	regions := []uffdRegion{{BaseHostVirtAddr: 0x7f0000000000, Size: uint64(memSize), Offset: 0, PageSize: 4096, PageSizeKiB: 4096}}
	msg, _ := json.Marshal(regions)
	_, _, err = conn.(*net.UnixConn).WriteMsgUnix(msg, unix.UnixRights(fd), nil)
	if err != nil {
		return fmt.Errorf("send to uffd handler: %w", err)
	}
	return nil
}

// runFakeUffdHandler plays the handler: listen, accept Firecracker's
// connection, check layout and fd, then stay alive as a real one must.
func runFakeUffdHandler(args []string) int {
	if len(args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: uffd-handler SOCKET MEMORY_FILE")
		return 2
	}
	sock, mem := args[0], args[1]
	fi, err := os.Stat(mem)
	if err != nil {
		fmt.Fprintf(os.Stderr, "uffd: memory file: %v\n", err)
		return 1
	}
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		fmt.Fprintf(os.Stderr, "uffd: listen: %v\n", err)
		return 1
	}
	conn, err := ln.AcceptUnix()
	if err != nil {
		fmt.Fprintf(os.Stderr, "uffd: accept: %v\n", err)
		return 1
	}
	buf := make([]byte, 64<<10)
	oob := make([]byte, unix.CmsgSpace(4))
	n, oobn, _, _, err := conn.ReadMsgUnix(buf, oob)
	if err != nil {
		fmt.Fprintf(os.Stderr, "uffd: read handshake: %v\n", err)
		return 1
	}
	cmsgs, err := unix.ParseSocketControlMessage(oob[:oobn])
	if err != nil || len(cmsgs) != 1 {
		fmt.Fprintf(os.Stderr, "uffd: no control message with the handshake (%v)\n", err)
		return 1
	}
	fds, err := unix.ParseUnixRights(&cmsgs[0])
	if err != nil || len(fds) != 1 {
		fmt.Fprintf(os.Stderr, "uffd: no file descriptor with the handshake (%v)\n", err)
		return 1
	}
	var regions []uffdRegion
	if err := json.Unmarshal(buf[:n], &regions); err != nil {
		fmt.Fprintf(os.Stderr, "uffd: bad layout JSON: %v\n", err)
		return 1
	}
	var total uint64
	for _, r := range regions {
		total += r.Size
	}
	if int64(total) != fi.Size() {
		fmt.Fprintf(os.Stderr, "uffd: layout covers %d bytes, memory file has %d\n", total, fi.Size())
		return 1
	}
	fmt.Fprintf(os.Stdout, "uffd handshake ok: %d region(s), %d bytes, fd %d, memory %s\n", len(regions), total, fds[0], filepath.Base(mem))
	for { // serve "faults" until killed
		time.Sleep(time.Hour)
	}
}
