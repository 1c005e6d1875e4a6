package server_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/wrenn-dev/wrenn/internal/agent/sandbox"
	"github.com/wrenn-dev/wrenn/internal/agent/sandbox/sandboxtest"
	"github.com/wrenn-dev/wrenn/internal/agent/server"
	"github.com/wrenn-dev/wrenn/internal/agentwire"
	"github.com/wrenn-dev/wrenn/internal/envd/envdtest"
	"github.com/wrenn-dev/wrenn/internal/testenv"
	pb "github.com/wrenn-dev/wrenn/proto/hostagent/v1"
	"github.com/wrenn-dev/wrenn/proto/hostagent/v1/hostagentv1connect"
)

// The server is tested over real HTTP on loopback, in front of a manager
// whose "VMs" are real envd processes on the host (see sandboxtest).

func startServer(t *testing.T) (h1, h2 hostagentv1connect.HostAgentServiceClient) {
	t.Helper()
	h1, h2, _ = startServerIn(t)
	return h1, h2
}

// startServerIn is startServer that also returns WRENN_DIR.
func startServerIn(t *testing.T) (h1, h2 hostagentv1connect.HostAgentServiceClient, dir string) {
	t.Helper()
	bin := envdtest.Build(t)
	dir = t.TempDir()
	if err := sandboxtest.FakeImages(dir); err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	m, err := sandbox.New(sandbox.Config{Dir: dir, Driver: &sandboxtest.HostDriver{Bin: bin}, Net: sandboxtest.NewLoopNet(), Disks: sandboxtest.FileDisks{}, Logger: log, Accel: "tcg"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		for _, s := range m.List(context.Background()).Sandboxes {
			m.Destroy(context.Background(), s.SandboxId)
		}
	})
	base := serve(t, m, dir, log)
	var p http.Protocols
	p.SetUnencryptedHTTP2(true)
	h2c := &http.Client{Transport: &http.Transport{Protocols: &p}}
	return hostagentv1connect.NewHostAgentServiceClient(http.DefaultClient, base),
		hostagentv1connect.NewHostAgentServiceClient(h2c, base), dir
}

// serve serves m on a loopback port until the test ends and returns the
// base URL.
func serve(t *testing.T, m *sandbox.Manager, dir string, log *slog.Logger) string {
	t.Helper()
	return "http://" + sandboxtest.ServeAgent(t, m, dir, log)
}

func TestServerOverHTTP(t *testing.T) {
	h1, h2 := startServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	hi, err := h2.GetHostInfo(ctx, connect.NewRequest(&pb.GetHostInfoRequest{}))
	if err != nil {
		t.Fatalf("host info over h2c: %v", err)
	}
	if hi.Msg.Vmm != "host-envd" || hi.Msg.Accel != "tcg" || hi.Msg.CpuCount == 0 || hi.Msg.MemoryBytes == 0 || hi.Msg.DiskFreeBytes == 0 || !hi.Msg.Healthy || len(hi.Msg.Templates) != 1 {
		t.Fatalf("host info %v", hi.Msg)
	}

	cr, err := h1.CreateSandbox(ctx, connect.NewRequest(&pb.CreateSandboxRequest{SandboxId: "s1"}))
	if err != nil {
		t.Fatalf("create: %v", err)
	}
	if cr.Msg.Sandbox.State != pb.SandboxState_SANDBOX_STATE_RUNNING {
		t.Fatalf("state %v", cr.Msg.Sandbox.State)
	}

	t.Run("host info reports the limits validation uses", func(t *testing.T) {
		hi, err := h1.GetHostInfo(ctx, connect.NewRequest(&pb.GetHostInfoRequest{}))
		if err != nil {
			t.Fatal(err)
		}
		lim, c := hi.Msg.GetLimits(), hi.Msg.GetCapacity()
		if lim.GetMaxVcpus() != 4 || lim.GetMaxMemoryMb() != 4096 || lim.GetMaxDiskMb() != 20480 {
			t.Fatalf("limits = %v; want the manager's 4 / 4096 / 20480", lim)
		}
		// s1 runs with the defaults: 1 vCPU, 256 MiB.
		if c.GetVcpus() != hi.Msg.GetCpuCount() || c.GetMemoryMb() != hi.Msg.GetMemoryBytes()>>20 || c.GetCommittedVcpus() != 1 || c.GetCommittedMemoryMb() != 256 {
			t.Fatalf("capacity = %v; want the machine's, with 1 vCPU and 256 MiB committed", c)
		}
		for _, req := range []*pb.CreateSandboxRequest{
			{SandboxId: "over-vcpus", Vcpus: lim.GetMaxVcpus() + 1},
			{SandboxId: "over-mem", MemoryMb: lim.GetMaxMemoryMb() + 1},
			{SandboxId: "over-disk", DiskMb: lim.GetMaxDiskMb() + 1},
		} {
			if _, err := h1.CreateSandbox(ctx, connect.NewRequest(req)); connect.CodeOf(err) != connect.CodeInvalidArgument {
				t.Fatalf("create %s just over the reported limit = %v; want invalid_argument", req.SandboxId, err)
			}
		}
	})

	t.Run("error codes", func(t *testing.T) {
		tests := []struct {
			name string
			call func() error
			code connect.Code
		}{
			{"unknown sandbox", func() error {
				_, err := h2.Exec(ctx, connect.NewRequest(&pb.ExecRequest{SandboxId: "nope", Cmd: "true"}))
				return err
			}, connect.CodeNotFound},
			{"bad size", func() error {
				_, err := h1.CreateSandbox(ctx, connect.NewRequest(&pb.CreateSandboxRequest{Vcpus: 1000}))
				return err
			}, connect.CodeInvalidArgument},
			{"duplicate", func() error {
				_, err := h1.CreateSandbox(ctx, connect.NewRequest(&pb.CreateSandboxRequest{SandboxId: "s1"}))
				return err
			}, connect.CodeAlreadyExists},
			{"resume running", func() error {
				_, err := h1.ResumeSandbox(ctx, connect.NewRequest(&pb.ResumeSandboxRequest{SandboxId: "s1"}))
				return err
			}, connect.CodeFailedPrecondition},
			{"missing file", func() error {
				_, err := h1.ReadFile(ctx, connect.NewRequest(&pb.ReadFileRequest{SandboxId: "s1", Path: "/nope"}))
				return err
			}, connect.CodeNotFound},
			{"stream without header", func() error {
				st := h2.WriteFileStream(ctx)
				st.Send(&pb.WriteFileStreamRequest{Part: &pb.WriteFileStreamRequest_Chunk{Chunk: []byte("x")}})
				_, err := st.CloseAndReceive()
				return err
			}, connect.CodeInvalidArgument},
			{"unknown process", func() error {
				st, err := h1.ConnectProcess(ctx, connect.NewRequest(&pb.ConnectProcessRequest{SandboxId: "s1", Process: &pb.ProcessSelector{Selector: &pb.ProcessSelector_Tag{Tag: "zz"}}}))
				if err != nil {
					return err
				}
				for st.Receive() {
				}
				return st.Err()
			}, connect.CodeNotFound},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				if err := tt.call(); connect.CodeOf(err) != tt.code {
					t.Fatalf("err = %v, want %v", err, tt.code)
				}
			})
		}
	})

	t.Run("exec", func(t *testing.T) {
		r, err := h2.Exec(ctx, connect.NewRequest(&pb.ExecRequest{SandboxId: "s1", Cmd: "/bin/sh", Args: []string{"-c", "echo hello | tr a-z A-Z"}}))
		if err != nil || string(r.Msg.Stdout) != "HELLO\n" || r.Msg.ExitCode != 0 {
			t.Fatalf("exec: %v %v", r, err)
		}
		st, err := h1.ExecStream(ctx, connect.NewRequest(&pb.ExecStreamRequest{SandboxId: "s1", Cmd: "/bin/sh", Args: []string{"-c", "echo a; echo b >&2; exit 4"}}))
		if err != nil {
			t.Fatal(err)
		}
		var out, errOut []byte
		var code int32 = -100
		for st.Receive() {
			out = append(out, st.Msg().GetStdout()...)
			errOut = append(errOut, st.Msg().GetStderr()...)
			if e := st.Msg().GetEnd(); e != nil {
				code = e.ExitCode
			}
		}
		if st.Err() != nil || string(out) != "a\n" || string(errOut) != "b\n" || code != 4 {
			t.Fatalf("stream: %v %q %q %d", st.Err(), out, errOut, code)
		}
	})

	t.Run("file streams", func(t *testing.T) {
		data := make([]byte, 6<<20+11)
		rand.Read(data)
		ws := h2.WriteFileStream(ctx)
		if err := ws.Send(&pb.WriteFileStreamRequest{Part: &pb.WriteFileStreamRequest_Header_{Header: &pb.WriteFileStreamRequest_Header{SandboxId: "s1", Path: "/big"}}}); err != nil {
			t.Fatal(err)
		}
		for off := 0; off < len(data); off += 100 << 10 {
			end := min(off+100<<10, len(data))
			if err := ws.Send(&pb.WriteFileStreamRequest{Part: &pb.WriteFileStreamRequest_Chunk{Chunk: data[off:end]}}); err != nil {
				t.Fatal(err)
			}
		}
		wr, err := ws.CloseAndReceive()
		if err != nil || wr.Msg.Size != int64(len(data)) {
			t.Fatalf("write stream: %v %v", wr, err)
		}
		rs, err := h1.ReadFileStream(ctx, connect.NewRequest(&pb.ReadFileStreamRequest{SandboxId: "s1", Path: "/big", ChunkSize: 1 << 20}))
		if err != nil {
			t.Fatal(err)
		}
		h := sha256.New()
		var size int64 = -1
		var got int64
		for rs.Receive() {
			if rs.Msg().GetChunk() == nil {
				size = rs.Msg().GetSize()
			}
			n, _ := h.Write(rs.Msg().GetChunk())
			got += int64(n)
		}
		want := sha256.Sum256(data)
		if rs.Err() != nil || size != int64(len(data)) || got != size || !bytes.Equal(h.Sum(nil), want[:]) {
			t.Fatalf("read stream: err %v size %d got %d", rs.Err(), size, got)
		}
	})

	t.Run("background process", func(t *testing.T) {
		sp, err := h1.StartProcess(ctx, connect.NewRequest(&pb.StartProcessRequest{SandboxId: "s1", Cmd: "/bin/sh", Args: []string{"-c", "echo one; sleep 0.3; echo two"}, Tag: "job"}))
		if err != nil {
			t.Fatal(err)
		}
		st, err := h2.ConnectProcess(ctx, connect.NewRequest(&pb.ConnectProcessRequest{SandboxId: "s1", Process: &pb.ProcessSelector{Selector: &pb.ProcessSelector_Pid{Pid: sp.Msg.Pid}}}))
		if err != nil {
			t.Fatal(err)
		}
		var out []byte
		ended := false
		for st.Receive() {
			out = append(out, st.Msg().GetStdout()...)
			ended = ended || st.Msg().GetEnd() != nil
		}
		if st.Err() != nil || string(out) != "one\ntwo\n" || !ended {
			t.Fatalf("connect: %v %q ended=%v", st.Err(), out, ended)
		}
	})

	ls, err := h1.ListSandboxes(ctx, connect.NewRequest(&pb.ListSandboxesRequest{}))
	if err != nil || len(ls.Msg.Sandboxes) != 1 || len(ls.Msg.AutoPausedSandboxIds) != 0 {
		t.Fatalf("list: %v %v", ls, err)
	}
	m, err := h1.GetSandboxMetrics(ctx, connect.NewRequest(&pb.GetSandboxMetricsRequest{SandboxId: "s1"}))
	if err != nil || m.Msg.Current == nil || m.Msg.Current.MemoryTotalBytes == 0 {
		t.Fatalf("metrics: %v %v", m, err)
	}
	if _, err := h2.DestroySandbox(ctx, connect.NewRequest(&pb.DestroySandboxRequest{SandboxId: "s1"})); err != nil {
		t.Fatal(err)
	}
	_, err = h2.GetSandbox(ctx, connect.NewRequest(&pb.GetSandboxRequest{SandboxId: "s1"}))
	if connect.CodeOf(err) != connect.CodeNotFound {
		t.Fatalf("get after destroy: %v", err)
	}
}

func TestPlainHealth(t *testing.T) {
	srv, err := server.New(server.Config{Manager: mustManager(t)})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, ln) }()
	resp, err := http.Get("http://" + ln.Addr().String() + "/health")
	if err != nil {
		t.Fatal(err)
	}
	var health server.Health
	derr := json.NewDecoder(resp.Body).Decode(&health)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || derr != nil || health.Status != "ok" || health.MTLS || health.CertExpiresAt != nil {
		t.Fatalf("health: status %d, %+v, %v", resp.StatusCode, health, derr)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if _, err := server.New(server.Config{}); err == nil {
		t.Fatal("New without a manager succeeded")
	}
}

func mustManager(t *testing.T) *sandbox.Manager {
	dir := t.TempDir()
	m, err := sandbox.New(sandbox.Config{Dir: dir, Driver: &sandboxtest.HostDriver{Bin: "/nonexistent"}, Net: sandboxtest.NewLoopNet(), Disks: sandboxtest.FileDisks{}})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// The agent's answers the control plane classifies (see internal/agentwire):
// a full guest disk is RESOURCE_EXHAUSTED with reason DISK_FULL, a path the
// guest would refuse is INVALID_ARGUMENT naming "path", and a call whose
// sandbox is torn down under it is FAILED_PRECONDITION, not UNAVAILABLE.
func TestServerErrorContract(t *testing.T) {
	h1, _, dir := startServerIn(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	for _, id := range []string{"s1", "s2"} {
		if _, err := h1.CreateSandbox(ctx, connect.NewRequest(&pb.CreateSandboxRequest{SandboxId: id})); err != nil {
			t.Fatalf("create %s: %v", id, err)
		}
	}
	// The host driver's guest root is a plain directory: a 64 KiB tmpfs in
	// it is a guest disk that fills up.
	full := filepath.Join(dir, "sandboxes", "s1", "guestroot", "full")
	if err := os.MkdirAll(full, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mount("tmpfs", full, "tmpfs", 0, "size=64k"); err != nil {
		testenv.Require(t, false, "mount a small tmpfs: %v", err)
	}
	t.Cleanup(func() { syscall.Unmount(full, syscall.MNT_DETACH) })
	// One without free inodes: mkdir there is envd's Connect ENOSPC.
	noInodes := filepath.Join(dir, "sandboxes", "s1", "guestroot", "noinodes")
	if err := os.MkdirAll(noInodes, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mount("tmpfs", noInodes, "tmpfs", 0, "size=64k,nr_inodes=1"); err != nil {
		testenv.Require(t, false, "mount a tmpfs without inodes: %v", err)
	}
	t.Cleanup(func() { syscall.Unmount(noInodes, syscall.MNT_DETACH) })

	tests := []struct {
		name   string
		call   func() error
		code   connect.Code
		reason pb.ErrorReason
		field  string
	}{
		{"full guest disk", func() error {
			_, err := h1.WriteFile(ctx, connect.NewRequest(&pb.WriteFileRequest{SandboxId: "s1", Path: "/full/big", Content: make([]byte, 1<<20)}))
			return err
		}, connect.CodeResourceExhausted, pb.ErrorReason_ERROR_REASON_DISK_FULL, ""},
		{"mkdir on a full guest disk", func() error {
			_, err := h1.MakeDir(ctx, connect.NewRequest(&pb.MakeDirRequest{SandboxId: "s1", Path: "/noinodes/d"}))
			return err
		}, connect.CodeResourceExhausted, pb.ErrorReason_ERROR_REASON_DISK_FULL, ""},
		{"4000-byte path", func() error {
			_, err := h1.WriteFile(ctx, connect.NewRequest(&pb.WriteFileRequest{SandboxId: "s1", Path: "/root/" + strings.Repeat("a", 3994), Content: []byte("x")}))
			return err
		}, connect.CodeInvalidArgument, pb.ErrorReason_ERROR_REASON_UNSPECIFIED, "path"},
		{"path over PATH_MAX", func() error {
			_, err := h1.ListDir(ctx, connect.NewRequest(&pb.ListDirRequest{SandboxId: "s1", Path: "/" + strings.Repeat("d/", 2100)}))
			return err
		}, connect.CodeInvalidArgument, pb.ErrorReason_ERROR_REASON_UNSPECIFIED, "path"},
		{"name over 255 bytes", func() error {
			st, err := h1.ReadFileStream(ctx, connect.NewRequest(&pb.ReadFileStreamRequest{SandboxId: "s1", Path: "/" + strings.Repeat("n", 300)}))
			if err != nil {
				return err
			}
			for st.Receive() {
			}
			return st.Err()
		}, connect.CodeInvalidArgument, pb.ErrorReason_ERROR_REASON_UNSPECIFIED, "path"},
		{"a path through a file", func() error {
			if _, err := h1.WriteFile(ctx, connect.NewRequest(&pb.WriteFileRequest{SandboxId: "s1", Path: "/plain", Content: []byte("x")})); err != nil {
				return fmt.Errorf("write: %w", err)
			}
			_, err := h1.ReadFile(ctx, connect.NewRequest(&pb.ReadFileRequest{SandboxId: "s1", Path: "/plain/x"}))
			return err
		}, connect.CodeInvalidArgument, pb.ErrorReason_ERROR_REASON_UNSPECIFIED, ""},
		{"missing file is no full disk", func() error {
			_, err := h1.ReadFile(ctx, connect.NewRequest(&pb.ReadFileRequest{SandboxId: "s1", Path: "/nope"}))
			return err
		}, connect.CodeNotFound, pb.ErrorReason_ERROR_REASON_UNSPECIFIED, ""},
		{"exec racing destroy", func() error {
			errc := make(chan error, 1)
			go func() {
				_, err := h1.Exec(ctx, connect.NewRequest(&pb.ExecRequest{SandboxId: "s2", Cmd: "/bin/sh", Args: []string{"-c", "sleep 60"}}))
				errc <- err
			}()
			time.Sleep(300 * time.Millisecond) // the exec reaches envd
			if _, err := h1.DestroySandbox(ctx, connect.NewRequest(&pb.DestroySandboxRequest{SandboxId: "s2"})); err != nil {
				return fmt.Errorf("destroy: %w", err)
			}
			select {
			case err := <-errc:
				return err
			case <-time.After(10 * time.Second):
				return errors.New("the exec still runs 10 s after its sandbox was destroyed")
			}
		}, connect.CodeFailedPrecondition, pb.ErrorReason_ERROR_REASON_UNSPECIFIED, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.call()
			d := agentwire.Detail(err)
			if connect.CodeOf(err) != tt.code || d.GetReason() != tt.reason || d.GetField() != tt.field {
				t.Fatalf("err = %v (detail %v), want code %v, reason %v, field %q", err, d, tt.code, tt.reason, tt.field)
			}
		})
	}
}
