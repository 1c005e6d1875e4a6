package firecracker

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestFakeIsStrict checks the contract server itself: a fake that accepts
// what Firecracker refuses would make the driver's contract tests worthless.
// Each step is sent raw, in order (the state machine matters).
func TestFakeIsStrict(t *testing.T) {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	sock := filepath.Join(dir, "fc.sock")
	kernel := filepath.Join(dir, "vmlinux")
	disk := filepath.Join(dir, "disk.raw")
	for _, p := range []string{kernel, disk} {
		if err := os.WriteFile(p, []byte("x"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	cmd := exec.Command(exe, "--api-sock", sock, "--id", "strict")
	cmd.Env = append(os.Environ(), fakeEnv+"=1")
	cmd.Dir = dir
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	c := newAPIClient(sock)
	defer c.close()
	deadline := time.Now().Add(5 * time.Second)
	for {
		if err := c.do(context.Background(), "GET", "/version", nil, nil); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("fake did not come up")
		}
		time.Sleep(10 * time.Millisecond)
	}

	bootSrc := fmt.Sprintf(`{"kernel_image_path":%q,"boot_args":"console=ttyS0"}`, kernel)
	rootDrive := `{"drive_id":"rootfs","path_on_host":"disk.raw","is_root_device":true,"is_read_only":false}`
	snapState, snapMem := filepath.Join(dir, "vmstate"), filepath.Join(dir, "mem")
	create := func(typ string) string {
		return fmt.Sprintf(`{"snapshot_type":%q,"snapshot_path":%q,"mem_file_path":%q}`, typ, snapState, snapMem)
	}
	load := fmt.Sprintf(`{"snapshot_path":%q,"mem_backend":{"backend_type":"File","backend_path":%q}}`, snapState, snapMem)

	steps := []struct {
		method, path, body string
		status             int
		fault              string // substring of fault_message
	}{
		{"GET", "/", "", 200, ""},
		{"DELETE", "/", "", 400, "Invalid request method and/or path"},
		{"PUT", "/vm", `{"state":"Paused"}`, 400, "Invalid request method and/or path: PUT vm."},
		{"PATCH", "/vm", `{"state":"Paused"}`, 400, "not supported before starting the microVM"},
		{"PUT", "/snapshot/create", create("Full"), 400, "not supported before starting the microVM"},
		{"PUT", "/actions", `{"action_type":"SendCtrlAltDel"}`, 400, "not supported before starting the microVM"},
		{"PUT", "/actions", `{"action_type":"InstanceStart"}`, 400, "without kernel configuration"},
		{"PUT", "/machine-config", "", 400, "Empty PUT request."},
		{"PUT", "/machine-config", `{"vcpu_count":2,"mem_size_mib":64,"memory":1}`, 400, "unknown field \"memory\""},
		{"PUT", "/machine-config", `{"vcpu_count":"2","mem_size_mib":64}`, 400, "cannot unmarshal string"},
		{"PUT", "/machine-config", `{"mem_size_mib":64}`, 400, "missing field `vcpu_count`"},
		{"PUT", "/machine-config", `{"vcpu_count":3,"mem_size_mib":64,"smt":true}`, 400, "vCPU number is invalid"},
		{"PUT", "/machine-config", `{"vcpu_count":1,"mem_size_mib":64} {}`, 400, "trailing"},
		{"PUT", "/drives/rootfs", `{"drive_id":"other","path_on_host":"disk.raw","is_root_device":true,"is_read_only":false}`, 400, "does not match"},
		{"PUT", "/drives/root-fs", rootDrive, 400, "alphanumeric characters and underscores"},
		{"PUT", "/drives/rootfs", `{"drive_id":"rootfs","path_on_host":"disk.raw","is_root_device":true}`, 400, "missing field `is_read_only`"},
		{"PUT", "/drives/rootfs", `{"drive_id":"rootfs","path_on_host":"nope.raw","is_root_device":true,"is_read_only":false}`, 400, "Unable to create the block device"},
		{"PUT", "/network-interfaces/eth0", `{"iface_id":"eth0"}`, 400, "missing field `host_dev_name`"},
		{"PUT", "/snapshot/load", fmt.Sprintf(`{"snapshot_path":%q,"mem_file_path":%q,"mem_backend":{"backend_type":"File","backend_path":%q}}`, snapState, snapMem, snapMem), 400, "too many fields"},
		{"PUT", "/snapshot/load", fmt.Sprintf(`{"snapshot_path":%q}`, snapState), 400, "either `mem_backend` or `mem_file_path` is required"},
		{"PUT", "/snapshot/load", fmt.Sprintf(`{"snapshot_path":%q,"mem_backend":{"backend_type":"Disk","backend_path":"x"}}`, snapState), 400, "unknown variant `Disk`"},
		{"PUT", "/snapshot", load, 400, "Missing snapshot operation type."},
		{"PUT", "/machine-config", `{"vcpu_count":1,"mem_size_mib":64}`, 204, ""},
		{"PUT", "/snapshot/load", load, 400, "not allowed after configuring boot-specific resources"},
		{"PUT", "/boot-source", `{"boot_args":"x"}`, 400, "missing field `kernel_image_path`"},
		{"PUT", "/boot-source", bootSrc, 204, ""},
		{"PUT", "/actions", `{"action_type":"InstanceStart"}`, 400, "requires a root drive"},
		{"PUT", "/drives/rootfs", rootDrive, 204, ""},
		{"PUT", "/drives/second", `{"drive_id":"second","path_on_host":"disk.raw","is_root_device":true,"is_read_only":true}`, 400, "root block device already exists"},
		{"PUT", "/actions", `{"action_type":"Reboot"}`, 400, "unknown variant `Reboot`"},
		{"PUT", "/actions", `{"action_type":"InstanceStart"}`, 204, ""},
		{"PUT", "/actions", `{"action_type":"InstanceStart"}`, 400, "not supported after starting the microVM"},
		{"PUT", "/boot-source", bootSrc, 400, "not supported after starting the microVM"},
		{"PUT", "/machine-config", `{"vcpu_count":1,"mem_size_mib":64}`, 400, "not supported after starting the microVM"},
		{"PUT", "/snapshot/create", create("Full"), 400, "must be paused"},
		{"PATCH", "/vm", `{"state":"Stopped"}`, 400, "unknown variant `Stopped`"},
		{"PATCH", "/vm", `{}`, 400, "missing field `state`"},
		{"PATCH", "/vm", `{"state":"Paused"}`, 204, ""},
		{"PUT", "/snapshot/create", create("Diff"), 400, "dirty page tracking"},
		{"PUT", "/snapshot/create", create("Incremental"), 400, "unknown variant `Incremental`"},
		{"PUT", "/snapshot/create", fmt.Sprintf(`{"snapshot_path":%q}`, snapState), 400, "missing field `mem_file_path`"},
		{"PUT", "/snapshot/create", create("Full"), 204, ""},
		{"PUT", "/snapshot/load", load, 400, "not supported after starting the microVM"},
		{"PATCH", "/vm", `{"state":"Resumed"}`, 204, ""},
	}
	for i, s := range steps {
		var body any
		if s.body != "" {
			body = []byte(s.body)
		}
		err := c.do(context.Background(), s.method, s.path, body, nil)
		name := fmt.Sprintf("step %d: %s %s %s", i, s.method, s.path, s.body)
		if s.status/100 == 2 {
			if err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			continue
		}
		var ae *APIError
		if !errors.As(err, &ae) {
			t.Fatalf("%s: err = %v, want HTTP %d", name, err, s.status)
		}
		if ae.Status != s.status || !strings.Contains(ae.FaultMessage, s.fault) {
			t.Fatalf("%s: got %d %q, want %d containing %q", name, ae.Status, ae.FaultMessage, s.status, s.fault)
		}
	}
	var info instanceInfo
	if err := c.do(context.Background(), "GET", "/", nil, &info); err != nil || info.State != "Running" || info.ID != "strict" {
		t.Fatalf("GET / = %+v, %v", info, err)
	}
	// The raw HTTP status is Firecracker's 204 for a successful PUT.
	req, _ := http.NewRequest("PATCH", "http://localhost/vm", strings.NewReader(`{"state":"Paused"}`))
	resp, err := c.http.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent {
		t.Fatalf("PATCH /vm status %d, want 204", resp.StatusCode)
	}
}
