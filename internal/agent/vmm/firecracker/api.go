package firecracker

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"
)

// Request bodies of the Firecracker API (swagger firecracker.yaml, v1.10+).
// Optional fields carry omitempty so a request never sends a field the
// targeted version might not know: Firecracker rejects unknown fields.

type bootSource struct {
	KernelImagePath string `json:"kernel_image_path"`
	BootArgs        string `json:"boot_args,omitempty"`
	InitrdPath      string `json:"initrd_path,omitempty"`
}

type drive struct {
	DriveID      string `json:"drive_id"`
	PathOnHost   string `json:"path_on_host"`
	IsRootDevice bool   `json:"is_root_device"`
	IsReadOnly   bool   `json:"is_read_only"`
	CacheType    string `json:"cache_type,omitempty"`
	IOEngine     string `json:"io_engine,omitempty"`
}

type networkInterface struct {
	IfaceID     string `json:"iface_id"`
	HostDevName string `json:"host_dev_name"`
	GuestMAC    string `json:"guest_mac,omitempty"`
}

type machineConfig struct {
	VCPUCount  int  `json:"vcpu_count"`
	MemSizeMiB int  `json:"mem_size_mib"`
	SMT        bool `json:"smt"`
}

type instanceAction struct {
	ActionType string `json:"action_type"`
}

type vmState struct {
	State string `json:"state"`
}

type snapshotCreate struct {
	SnapshotType string `json:"snapshot_type,omitempty"`
	SnapshotPath string `json:"snapshot_path"`
	MemFilePath  string `json:"mem_file_path"`
}

type memBackend struct {
	BackendType string `json:"backend_type"`
	BackendPath string `json:"backend_path"`
}

type networkOverride struct {
	IfaceID     string `json:"iface_id"`
	HostDevName string `json:"host_dev_name"`
}

type snapshotLoad struct {
	SnapshotPath     string            `json:"snapshot_path"`
	MemBackend       *memBackend       `json:"mem_backend,omitempty"`
	ResumeVM         bool              `json:"resume_vm,omitempty"`
	NetworkOverrides []networkOverride `json:"network_overrides,omitempty"`
}

// instanceInfo is the answer to GET /.
type instanceInfo struct {
	AppName    string `json:"app_name"`
	ID         string `json:"id"`
	State      string `json:"state"`
	VMMVersion string `json:"vmm_version"`
}

// Instance states reported by GET /.
const (
	stateNotStarted = "Not started"
	stateRunning    = "Running"
	statePaused     = "Paused"
)

// APIError is a non-2xx answer from the Firecracker API, with the
// fault_message Firecracker put in its body.
type APIError struct {
	Method string
	Path   string
	Status int
	// FaultMessage is Firecracker's explanation; empty if the body had none.
	FaultMessage string
}

func (e *APIError) Error() string {
	msg := e.FaultMessage
	if msg == "" {
		msg = "(no fault_message in response)"
	}
	return fmt.Sprintf("firecracker API %s %s: HTTP %d: %s", e.Method, e.Path, e.Status, msg)
}

// apiClient talks HTTP/1.1 to Firecracker over its Unix socket.
type apiClient struct {
	sock string
	http *http.Client
}

func newAPIClient(sock string) *apiClient {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		},
		// Firecracker's micro-http serves one request at a time; a small
		// pool avoids piling up idle connections on it.
		MaxIdleConns:    1,
		IdleConnTimeout: 30 * time.Second,
	}
	return &apiClient{sock: sock, http: &http.Client{Transport: tr}}
}

func (c *apiClient) close() {
	c.http.CloseIdleConnections()
}

// do sends one request. body (if non-nil) is JSON-encoded unless it is
// already []byte; out (if non-nil) receives a 200 answer's JSON.
func (c *apiClient) do(ctx context.Context, method, path string, body, out any) error {
	var rd io.Reader
	if raw, ok := body.([]byte); ok {
		rd = bytes.NewReader(raw) // already JSON
	} else if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return fmt.Errorf("encode %s %s body: %w", method, path, err)
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://localhost"+path, rd)
	if err != nil {
		return fmt.Errorf("build %s %s: %w", method, path, err)
	}
	req.Header.Set("Accept", "application/json")
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("firecracker API %s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	// Answers are tiny; the cap keeps a broken peer from costing memory.
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return fmt.Errorf("firecracker API %s %s: read answer: %w", method, path, err)
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return &APIError{Method: method, Path: path, Status: resp.StatusCode, FaultMessage: parseFault(raw)}
	}
	if out != nil {
		if err := json.Unmarshal(raw, out); err != nil {
			return fmt.Errorf("firecracker API %s %s: decode answer: %w", method, path, err)
		}
	}
	return nil
}

// parseFault extracts fault_message from an error body; a body that is not
// the documented JSON is returned trimmed so nothing is lost.
func parseFault(raw []byte) string {
	var f struct {
		FaultMessage *string `json:"fault_message"`
	}
	if err := json.Unmarshal(raw, &f); err == nil && f.FaultMessage != nil {
		return *f.FaultMessage
	}
	s := strings.TrimSpace(string(raw))
	if len(s) > 512 {
		s = s[:512] + "..."
	}
	return s
}

// isAPIError reports whether err is an answer from Firecracker (as opposed
// to a transport failure).
func isAPIError(err error) bool {
	var ae *APIError
	return errors.As(err, &ae)
}
