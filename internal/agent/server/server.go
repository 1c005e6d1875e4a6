// Package server is the host agent's Connect RPC server: the
// HostAgentService over the sandbox manager, on HTTP/1.1 and h2c.
package server

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"runtime"
	"strconv"
	"strings"
	"time"

	"connectrpc.com/connect"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/wrenn-dev/wrenn/internal/agent/agenterr"
	"github.com/wrenn-dev/wrenn/internal/agent/proxy"
	"github.com/wrenn-dev/wrenn/internal/agent/sandbox"
	"github.com/wrenn-dev/wrenn/internal/agentwire"
	"github.com/wrenn-dev/wrenn/internal/buildinfo"
	"github.com/wrenn-dev/wrenn/internal/pki"
	pb "github.com/wrenn-dev/wrenn/proto/hostagent/v1"
	"github.com/wrenn-dev/wrenn/proto/hostagent/v1/hostagentv1connect"
)

// Config configures a Server.
type Config struct {
	Manager *sandbox.Manager
	// Dir is WRENN_DIR, whose filesystem's free space GetHostInfo reports.
	Dir    string
	Logger *slog.Logger
	// CapacityVCPUs and CapacityMemoryMB are what this host offers all its
	// sandboxes together; zero means the machine's CPUs and MemTotal.
	CapacityVCPUs, CapacityMemoryMB int
	// OnCall, when set, runs at the start of every RPC (not /health): the
	// control plane reached this agent.
	OnCall func()
	// Certs, in mTLS mode, holds the host certificate whose expiry /health
	// reports.
	Certs *pki.HostCertStore
	// HandlerOptions apply to the Connect service (the metrics interceptor).
	HandlerOptions []connect.HandlerOption
	// Metrics, when set, is served at GET /metrics.
	Metrics http.Handler
}

// Server implements hostagentv1connect.HostAgentServiceHandler.
type Server struct {
	m                   *sandbox.Manager
	dir                 string
	log                 *slog.Logger
	capVCPUs, capMemory int
	onCall              func()
	certs               *pki.HostCertStore
	handlerOpts         []connect.HandlerOption
	metrics             http.Handler
	proxy               *proxy.Handler
}

var _ hostagentv1connect.HostAgentServiceHandler = (*Server)(nil)

// New returns a Server.
func New(cfg Config) (*Server, error) {
	if cfg.Manager == nil {
		return nil, errors.New("server: Manager is required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return &Server{m: cfg.Manager, dir: cfg.Dir, log: cfg.Logger, capVCPUs: cfg.CapacityVCPUs, capMemory: cfg.CapacityMemoryMB,
		onCall: cfg.OnCall, certs: cfg.Certs, handlerOpts: cfg.HandlerOptions, metrics: cfg.Metrics,
		proxy: proxy.New(cfg.Manager, proxy.Config{Logger: cfg.Logger})}, nil
}

// Handler serves the Connect service, the sandbox HTTP proxy and GET /health.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	path, h := hostagentv1connect.NewHostAgentServiceHandler(s, s.handlerOpts...)
	if s.onCall != nil {
		rpc := h
		h = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			s.onCall()
			rpc.ServeHTTP(w, r)
		})
	}
	mux.Handle(path, h)
	// The sandbox HTTP proxy: the control plane's users' traffic to guest
	// ports. It is a call from the control plane too.
	var px http.Handler = s.proxy
	if s.onCall != nil {
		px = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			s.onCall()
			s.proxy.ServeHTTP(w, r)
		})
	}
	mux.Handle(agentwire.ProxyPathPrefix, px)
	mux.HandleFunc("GET /health", s.health)
	if s.metrics != nil {
		mux.Handle("GET /metrics", s.metrics)
	}
	return mux
}

// Health is the answer of GET /health.
type Health struct {
	Status string `json:"status"`
	// MTLS says whether the agent serves mutual TLS.
	MTLS bool `json:"mtls"`
	// CertExpiresAt is when the host certificate expires (mTLS only).
	CertExpiresAt *time.Time `json:"cert_expires_at,omitempty"`
}

func (s *Server) health(w http.ResponseWriter, _ *http.Request) {
	out := Health{Status: "ok"}
	if s.certs != nil {
		if leaf := s.certs.Leaf(); leaf != nil {
			exp := leaf.NotAfter.UTC()
			out.MTLS, out.CertExpiresAt = true, &exp
		}
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(out)
}

// Serve serves on ln until ctx ends, then shuts down gracefully within
// 10 s. On a TLS listener (tls.Listen with the host certificate store's
// configuration, so each handshake takes the current certificate) it speaks
// HTTP/1.1 over TLS and logs each refused handshake on one line; on a plain
// one HTTP/1.1 and unencrypted HTTP/2.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	var protos http.Protocols
	protos.SetHTTP1(true)
	protos.SetUnencryptedHTTP2(true)
	hs := &http.Server{
		Handler:           s.Handler(),
		Protocols:         &protos,
		ReadHeaderTimeout: 10 * time.Second,
		BaseContext:       func(net.Listener) context.Context { return context.WithoutCancel(ctx) },
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelWarn),
	}
	errc := make(chan error, 1)
	go func() { errc <- hs.Serve(ln) }()
	select {
	case err := <-errc:
		return fmt.Errorf("serve: %w", err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := hs.Shutdown(sctx); err != nil {
		hs.Close()
	}
	return nil
}

// wireCodes is the one table from the agent's domain errors to Connect
// codes (and the ErrorDetail reason, see internal/agentwire). Earlier rows
// win when an error matches several: an exec that lost its guest to a
// pause is InvalidState, not Unavailable.
var wireCodes = []struct {
	kind   error
	code   connect.Code
	reason pb.ErrorReason
}{
	{agenterr.ErrInvalidState, connect.CodeFailedPrecondition, pb.ErrorReason_ERROR_REASON_UNSPECIFIED},
	{agenterr.ErrNotFound, connect.CodeNotFound, pb.ErrorReason_ERROR_REASON_UNSPECIFIED},
	{agenterr.ErrExists, connect.CodeAlreadyExists, pb.ErrorReason_ERROR_REASON_UNSPECIFIED},
	{agenterr.ErrInvalidArgument, connect.CodeInvalidArgument, pb.ErrorReason_ERROR_REASON_UNSPECIFIED},
	{agenterr.ErrPermissionDenied, connect.CodePermissionDenied, pb.ErrorReason_ERROR_REASON_UNSPECIFIED},
	{agenterr.ErrDiskFull, connect.CodeResourceExhausted, pb.ErrorReason_ERROR_REASON_DISK_FULL},
	{agenterr.ErrTooLarge, connect.CodeResourceExhausted, pb.ErrorReason_ERROR_REASON_UNSPECIFIED},
	{agenterr.ErrUnavailable, connect.CodeUnavailable, pb.ErrorReason_ERROR_REASON_UNSPECIFIED},
	{context.Canceled, connect.CodeCanceled, pb.ErrorReason_ERROR_REASON_UNSPECIFIED},
	{context.DeadlineExceeded, connect.CodeDeadlineExceeded, pb.ErrorReason_ERROR_REASON_UNSPECIFIED},
}

// toConnect maps every error the manager returns to its wire form, in one
// place; an error of no kind is Internal.
func toConnect(err error) error {
	if err == nil {
		return nil
	}
	for _, w := range wireCodes {
		if errors.Is(err, w.kind) {
			return agentwire.NewError(w.code, w.reason, agenterr.FieldOf(err), err)
		}
	}
	var ce *connect.Error
	if errors.As(err, &ce) {
		return err // the server's own stream errors
	}
	return connect.NewError(connect.CodeInternal, err)
}

func (s *Server) CreateSandbox(ctx context.Context, req *connect.Request[pb.CreateSandboxRequest]) (*connect.Response[pb.CreateSandboxResponse], error) {
	info, err := s.m.Create(ctx, req.Msg)
	if err != nil {
		return nil, toConnect(err)
	}
	return connect.NewResponse(&pb.CreateSandboxResponse{Sandbox: info}), nil
}

func (s *Server) DestroySandbox(ctx context.Context, req *connect.Request[pb.DestroySandboxRequest]) (*connect.Response[pb.DestroySandboxResponse], error) {
	if err := s.m.Destroy(ctx, req.Msg.GetSandboxId()); err != nil {
		return nil, toConnect(err)
	}
	return connect.NewResponse(&pb.DestroySandboxResponse{}), nil
}

func (s *Server) PauseSandbox(ctx context.Context, req *connect.Request[pb.PauseSandboxRequest]) (*connect.Response[pb.PauseSandboxResponse], error) {
	info, err := s.m.Pause(ctx, req.Msg.GetSandboxId())
	if err != nil {
		return nil, toConnect(err)
	}
	return connect.NewResponse(&pb.PauseSandboxResponse{Sandbox: info}), nil
}

func (s *Server) ResumeSandbox(ctx context.Context, req *connect.Request[pb.ResumeSandboxRequest]) (*connect.Response[pb.ResumeSandboxResponse], error) {
	info, err := s.m.Resume(ctx, req.Msg.GetSandboxId(), req.Msg.TimeoutSec)
	if err != nil {
		return nil, toConnect(err)
	}
	return connect.NewResponse(&pb.ResumeSandboxResponse{Sandbox: info}), nil
}

func (s *Server) PingSandbox(ctx context.Context, req *connect.Request[pb.PingSandboxRequest]) (*connect.Response[pb.PingSandboxResponse], error) {
	at, err := s.m.Ping(ctx, req.Msg.GetSandboxId())
	if err != nil {
		return nil, toConnect(err)
	}
	return connect.NewResponse(&pb.PingSandboxResponse{LastActiveAt: timestamppb.New(at)}), nil
}

func (s *Server) GetSandbox(ctx context.Context, req *connect.Request[pb.GetSandboxRequest]) (*connect.Response[pb.GetSandboxResponse], error) {
	info, err := s.m.Get(ctx, req.Msg.GetSandboxId())
	if err != nil {
		return nil, toConnect(err)
	}
	return connect.NewResponse(&pb.GetSandboxResponse{Sandbox: info}), nil
}

func (s *Server) ListSandboxes(ctx context.Context, req *connect.Request[pb.ListSandboxesRequest]) (*connect.Response[pb.ListSandboxesResponse], error) {
	return connect.NewResponse(s.m.List(ctx)), nil
}

func (s *Server) PauseAll(ctx context.Context, req *connect.Request[pb.PauseAllRequest]) (*connect.Response[pb.PauseAllResponse], error) {
	p := int(req.Msg.GetParallelism())
	if p > 64 {
		p = 64
	}
	return connect.NewResponse(s.m.PauseAll(ctx, p)), nil
}

func (s *Server) Exec(ctx context.Context, req *connect.Request[pb.ExecRequest]) (*connect.Response[pb.ExecResponse], error) {
	res, err := s.m.Exec(ctx, req.Msg)
	if err != nil {
		return nil, toConnect(err)
	}
	return connect.NewResponse(res), nil
}

func (s *Server) ExecStream(ctx context.Context, req *connect.Request[pb.ExecStreamRequest], st *connect.ServerStream[pb.ExecStreamResponse]) error {
	return toConnect(s.m.ExecStream(ctx, req.Msg, st.Send))
}

func (s *Server) StartProcess(ctx context.Context, req *connect.Request[pb.StartProcessRequest]) (*connect.Response[pb.StartProcessResponse], error) {
	res, err := s.m.StartProcess(ctx, req.Msg)
	if err != nil {
		return nil, toConnect(err)
	}
	return connect.NewResponse(res), nil
}

func (s *Server) ListProcesses(ctx context.Context, req *connect.Request[pb.ListProcessesRequest]) (*connect.Response[pb.ListProcessesResponse], error) {
	res, err := s.m.ListProcesses(ctx, req.Msg.GetSandboxId())
	if err != nil {
		return nil, toConnect(err)
	}
	return connect.NewResponse(res), nil
}

func (s *Server) KillProcess(ctx context.Context, req *connect.Request[pb.KillProcessRequest]) (*connect.Response[pb.KillProcessResponse], error) {
	if err := s.m.KillProcess(ctx, req.Msg); err != nil {
		return nil, toConnect(err)
	}
	return connect.NewResponse(&pb.KillProcessResponse{}), nil
}

func (s *Server) ConnectProcess(ctx context.Context, req *connect.Request[pb.ConnectProcessRequest], st *connect.ServerStream[pb.ExecStreamResponse]) error {
	return toConnect(s.m.ConnectProcess(ctx, req.Msg, st.Send))
}

func (s *Server) PtyAttach(ctx context.Context, req *connect.Request[pb.PtyAttachRequest], st *connect.ServerStream[pb.PtyAttachResponse]) error {
	return toConnect(s.m.PtyAttach(ctx, req.Msg, st.Send))
}

func (s *Server) PtyInput(ctx context.Context, req *connect.Request[pb.PtyInputRequest]) (*connect.Response[pb.PtyInputResponse], error) {
	if err := s.m.PtyInput(ctx, req.Msg.GetSandboxId(), req.Msg.GetTag(), req.Msg.GetData()); err != nil {
		return nil, toConnect(err)
	}
	return connect.NewResponse(&pb.PtyInputResponse{}), nil
}

func (s *Server) PtyResize(ctx context.Context, req *connect.Request[pb.PtyResizeRequest]) (*connect.Response[pb.PtyResizeResponse], error) {
	if err := s.m.PtyResize(ctx, req.Msg.GetSandboxId(), req.Msg.GetTag(), req.Msg.GetCols(), req.Msg.GetRows()); err != nil {
		return nil, toConnect(err)
	}
	return connect.NewResponse(&pb.PtyResizeResponse{}), nil
}

func (s *Server) PtyKill(ctx context.Context, req *connect.Request[pb.PtyKillRequest]) (*connect.Response[pb.PtyKillResponse], error) {
	if err := s.m.PtyKill(ctx, req.Msg.GetSandboxId(), req.Msg.GetTag()); err != nil {
		return nil, toConnect(err)
	}
	return connect.NewResponse(&pb.PtyKillResponse{}), nil
}

func (s *Server) WriteFile(ctx context.Context, req *connect.Request[pb.WriteFileRequest]) (*connect.Response[pb.WriteFileResponse], error) {
	res, err := s.m.WriteFile(ctx, req.Msg)
	if err != nil {
		return nil, toConnect(err)
	}
	return connect.NewResponse(res), nil
}

func (s *Server) ReadFile(ctx context.Context, req *connect.Request[pb.ReadFileRequest]) (*connect.Response[pb.ReadFileResponse], error) {
	res, err := s.m.ReadFile(ctx, req.Msg)
	if err != nil {
		return nil, toConnect(err)
	}
	return connect.NewResponse(res), nil
}

// chunkReader reads the data chunks of a WriteFileStream after its header.
type chunkReader struct {
	st  *connect.ClientStream[pb.WriteFileStreamRequest]
	buf []byte
}

func (r *chunkReader) Read(p []byte) (int, error) {
	for len(r.buf) == 0 {
		if !r.st.Receive() {
			if err := r.st.Err(); err != nil {
				return 0, err
			}
			return 0, io.EOF
		}
		if r.st.Msg().GetHeader() != nil {
			return 0, agenterr.New(agenterr.ErrInvalidArgument, "a second header in the stream")
		}
		r.buf = r.st.Msg().GetChunk()
	}
	n := copy(p, r.buf)
	r.buf = r.buf[n:]
	return n, nil
}

func (s *Server) WriteFileStream(ctx context.Context, st *connect.ClientStream[pb.WriteFileStreamRequest]) (*connect.Response[pb.WriteFileResponse], error) {
	if !st.Receive() {
		if err := st.Err(); err != nil {
			return nil, err
		}
		return nil, toConnect(agenterr.New(agenterr.ErrInvalidArgument, "empty stream: the first message must be the header"))
	}
	h := st.Msg().GetHeader()
	if h == nil {
		return nil, toConnect(agenterr.New(agenterr.ErrInvalidArgument, "the first message must be the header"))
	}
	res, err := s.m.WriteFileStream(ctx, h, &chunkReader{st: st})
	if err != nil {
		return nil, toConnect(err)
	}
	return connect.NewResponse(res), nil
}

// Chunk sizes for ReadFileStream.
const (
	defaultChunk = 256 << 10
	maxChunk     = 4 << 20
)

func (s *Server) ReadFileStream(ctx context.Context, req *connect.Request[pb.ReadFileStreamRequest], st *connect.ServerStream[pb.ReadFileStreamResponse]) error {
	chunk := int(req.Msg.GetChunkSize())
	if chunk == 0 {
		chunk = defaultChunk
	}
	if chunk > maxChunk {
		return toConnect(agenterr.Invalid("chunk_size", "chunk_size %d above %d", chunk, maxChunk))
	}
	rc, size, err := s.m.ReadFileStream(ctx, req.Msg.GetSandboxId(), req.Msg.GetPath(), req.Msg.GetUser())
	if err != nil {
		return toConnect(err)
	}
	defer rc.Close()
	if size >= 0 {
		if err := st.Send(&pb.ReadFileStreamResponse{Part: &pb.ReadFileStreamResponse_Size{Size: size}}); err != nil {
			return err
		}
	}
	buf := make([]byte, chunk)
	for {
		n, err := io.ReadFull(rc, buf)
		if n > 0 {
			if serr := st.Send(&pb.ReadFileStreamResponse{Part: &pb.ReadFileStreamResponse_Chunk{Chunk: buf[:n]}}); serr != nil {
				return serr
			}
		}
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return nil
		}
		if err != nil {
			return toConnect(agenterr.Wrap(agenterr.ErrUnavailable, err, "read file %q", req.Msg.GetPath()))
		}
	}
}

func (s *Server) ListDir(ctx context.Context, req *connect.Request[pb.ListDirRequest]) (*connect.Response[pb.ListDirResponse], error) {
	res, err := s.m.ListDir(ctx, req.Msg)
	if err != nil {
		return nil, toConnect(err)
	}
	return connect.NewResponse(res), nil
}

func (s *Server) MakeDir(ctx context.Context, req *connect.Request[pb.MakeDirRequest]) (*connect.Response[pb.MakeDirResponse], error) {
	res, err := s.m.MakeDir(ctx, req.Msg)
	if err != nil {
		return nil, toConnect(err)
	}
	return connect.NewResponse(res), nil
}

func (s *Server) RemovePath(ctx context.Context, req *connect.Request[pb.RemovePathRequest]) (*connect.Response[pb.RemovePathResponse], error) {
	if err := s.m.RemovePath(ctx, req.Msg); err != nil {
		return nil, toConnect(err)
	}
	return connect.NewResponse(&pb.RemovePathResponse{}), nil
}

func (s *Server) CreateSnapshot(ctx context.Context, req *connect.Request[pb.CreateSnapshotRequest]) (*connect.Response[pb.CreateSnapshotResponse], error) {
	res, err := s.m.CreateSnapshot(ctx, req.Msg.GetSandboxId(), req.Msg.GetName())
	if err != nil {
		return nil, toConnect(err)
	}
	return connect.NewResponse(res), nil
}

func (s *Server) DeleteSnapshot(ctx context.Context, req *connect.Request[pb.DeleteSnapshotRequest]) (*connect.Response[pb.DeleteSnapshotResponse], error) {
	if err := s.m.DeleteSnapshot(ctx, req.Msg.GetName()); err != nil {
		return nil, toConnect(err)
	}
	return connect.NewResponse(&pb.DeleteSnapshotResponse{}), nil
}

func (s *Server) FlattenRootfs(ctx context.Context, req *connect.Request[pb.FlattenRootfsRequest]) (*connect.Response[pb.FlattenRootfsResponse], error) {
	res, err := s.m.FlattenRootfs(ctx, req.Msg.GetSandboxId(), req.Msg.GetName())
	if err != nil {
		return nil, toConnect(err)
	}
	return connect.NewResponse(res), nil
}

func (s *Server) GetSandboxMetrics(ctx context.Context, req *connect.Request[pb.GetSandboxMetricsRequest]) (*connect.Response[pb.GetSandboxMetricsResponse], error) {
	res, err := s.m.Metrics(ctx, req.Msg.GetSandboxId())
	if err != nil {
		return nil, toConnect(err)
	}
	return connect.NewResponse(res), nil
}

func (s *Server) GetHostInfo(ctx context.Context, req *connect.Request[pb.GetHostInfoRequest]) (*connect.Response[pb.GetHostInfoResponse], error) {
	running, paused := s.m.Counts()
	res := &pb.GetHostInfoResponse{
		Version:          buildinfo.Version,
		Vmm:              s.m.DriverName(),
		Accel:            string(s.m.Accel()),
		CpuCount:         uint32(runtime.NumCPU()),
		RunningSandboxes: uint32(running),
		PausedSandboxes:  uint32(paused),
		Templates:        s.m.Templates(),
		Healthy:          true,
		Arch:             runtime.GOARCH,
	}
	if mem, err := memTotal(); err == nil {
		res.MemoryBytes = mem
	} else {
		s.log.Warn("host info: memory", "err", err)
	}
	res.Limits = s.m.Limits()
	res.Capacity = s.capacity(res.CpuCount, res.MemoryBytes>>20)
	if s.dir != "" {
		var fs unix.Statfs_t
		if err := unix.Statfs(s.dir, &fs); err == nil {
			res.DiskFreeBytes = fs.Bavail * uint64(fs.Bsize)
		} else {
			res.Healthy = false
			s.log.Warn("host info: statfs", "dir", s.dir, "err", err)
		}
	}
	return connect.NewResponse(res), nil
}

// capacity reports the configured capacity, else the machine's, with what
// the running sandboxes hold.
func (s *Server) capacity(cpus uint32, memMB uint64) *pb.HostCapacity {
	c := &pb.HostCapacity{Vcpus: cpus, MemoryMb: memMB}
	if s.capVCPUs > 0 {
		c.Vcpus = uint32(s.capVCPUs)
	}
	if s.capMemory > 0 {
		c.MemoryMb = uint64(s.capMemory)
	}
	v, m := s.m.Committed()
	c.CommittedVcpus, c.CommittedMemoryMb = uint32(v), uint64(m)
	return c
}

func memTotal() (uint64, error) {
	f, err := os.Open("/proc/meminfo")
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "MemTotal:"); ok {
			kb, err := strconv.ParseUint(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			if err != nil {
				return 0, fmt.Errorf("parse MemTotal: %w", err)
			}
			return kb * 1024, nil
		}
	}
	return 0, errors.New("no MemTotal in /proc/meminfo")
}
