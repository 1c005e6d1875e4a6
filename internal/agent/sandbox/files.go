package sandbox

import (
	"bytes"
	"context"
	"fmt"
	"io"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/wrenn-dev/wrenn/internal/agent/agenterr"
	"github.com/wrenn-dev/wrenn/internal/agentwire"
	fspb "github.com/wrenn-dev/wrenn/proto/envd/filesystem"
	pb "github.com/wrenn-dev/wrenn/proto/hostagent/v1"
)

// activityReader refreshes the sandbox's idle timer as data flows.
type activityReader struct {
	r io.Reader
	m *Manager
	s *Sandbox
	n int64
}

func (a *activityReader) Read(p []byte) (int, error) {
	n, err := a.r.Read(p)
	a.n += int64(n)
	if n > 0 {
		a.m.touch(a.s)
	}
	return n, err
}

// checkGuestPath refuses, naming the field, a path the guest's kernel
// would refuse, so the caller learns which input is wrong.
func checkGuestPath(p string) error {
	if err := agentwire.CheckGuestPath(p); err != nil {
		return agenterr.Invalid("path", "%s", err.Error())
	}
	return nil
}

// WriteFile writes content to path (unary).
func (m *Manager) WriteFile(ctx context.Context, req *pb.WriteFileRequest) (*pb.WriteFileResponse, error) {
	return m.WriteFileStream(ctx, &pb.WriteFileStreamRequest_Header{
		SandboxId: req.GetSandboxId(), Path: req.GetPath(), Mode: req.GetMode(), User: req.GetUser(),
	}, bytes.NewReader(req.GetContent()))
}

// WriteFileStream streams r into path; nothing is held whole in memory.
func (m *Manager) WriteFileStream(ctx context.Context, h *pb.WriteFileStreamRequest_Header, r io.Reader) (*pb.WriteFileResponse, error) {
	if err := checkGuestPath(h.GetPath()); err != nil {
		return nil, err
	}
	if h.GetMode() > 0o7777 {
		return nil, agenterr.Invalid("mode", "mode %o is not a permission mode", h.GetMode())
	}
	s, c, err := m.running(h.GetSandboxId())
	if err != nil {
		return nil, err
	}
	ar := &activityReader{r: r, m: m, s: s}
	if _, err := c.UploadFile(ctx, h.GetPath(), h.GetUser(), ar); err != nil {
		return nil, m.guestErr(s, c, err, "write file %q", h.GetPath())
	}
	if mode := h.GetMode(); mode != 0 && mode != 0o644 {
		// envd's /files has no mode: set it with chmod in the guest.
		res, err := m.Exec(ctx, &pb.ExecRequest{SandboxId: h.GetSandboxId(), Cmd: "chmod", Args: []string{fmt.Sprintf("%o", mode), h.GetPath()}, User: h.GetUser()})
		if err != nil {
			return nil, fmt.Errorf("set mode of %q: %w", h.GetPath(), err)
		}
		if res.GetExitCode() != 0 {
			return nil, errorf(nil, "set mode of %q: chmod: %s", h.GetPath(), bytes.TrimSpace(res.GetStderr()))
		}
	}
	return &pb.WriteFileResponse{Path: h.GetPath(), Size: ar.n}, nil
}

// ReadFile reads a whole file (bounded by MaxUnaryFile).
func (m *Manager) ReadFile(ctx context.Context, req *pb.ReadFileRequest) (*pb.ReadFileResponse, error) {
	rc, size, err := m.ReadFileStream(ctx, req.GetSandboxId(), req.GetPath(), req.GetUser())
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	limit := m.cfg.MaxUnaryFile
	if size > limit {
		return nil, errorf(agenterr.ErrTooLarge, "file %q has %d bytes, more than the %d a unary read returns; use ReadFileStream", req.GetPath(), size, limit)
	}
	b, err := io.ReadAll(io.LimitReader(rc, limit+1))
	if err != nil {
		return nil, envdErr(err, "read file %q", req.GetPath())
	}
	if int64(len(b)) > limit {
		return nil, errorf(agenterr.ErrTooLarge, "file %q is larger than the %d bytes a unary read returns; use ReadFileStream", req.GetPath(), limit)
	}
	return &pb.ReadFileResponse{Content: b}, nil
}

// ReadFileStream opens path for streaming; size is -1 when unknown.
func (m *Manager) ReadFileStream(ctx context.Context, id, path, user string) (io.ReadCloser, int64, error) {
	if err := checkGuestPath(path); err != nil {
		return nil, 0, err
	}
	s, c, err := m.running(id)
	if err != nil {
		return nil, 0, err
	}
	rc, size, err := c.DownloadFile(ctx, path, user)
	if err != nil {
		return nil, 0, m.guestErr(s, c, err, "read file %q", path)
	}
	return readCloser{Reader: &activityReader{r: rc, m: m, s: s}, Closer: rc}, size, nil
}

type readCloser struct {
	io.Reader
	io.Closer
}

func entryInfo(e *fspb.EntryInfo) *pb.EntryInfo {
	if e == nil {
		return nil
	}
	out := &pb.EntryInfo{Name: e.GetName(), Path: e.GetPath(), Size: e.GetSize(), Mode: e.GetMode(), SymlinkTarget: e.GetSymlinkTarget()}
	switch e.GetType() {
	case fspb.FileType_FILE_TYPE_DIRECTORY:
		out.Type = "dir"
	case fspb.FileType_FILE_TYPE_SYMLINK:
		out.Type = "symlink"
	default:
		out.Type = "file"
	}
	if t := e.GetModifiedTime(); t != nil {
		out.ModifiedAt = timestamppb.New(t.AsTime())
	}
	return out
}

// ListDir lists a directory (depth 0 means 1).
func (m *Manager) ListDir(ctx context.Context, req *pb.ListDirRequest) (*pb.ListDirResponse, error) {
	if err := checkGuestPath(req.GetPath()); err != nil {
		return nil, err
	}
	depth := req.GetDepth()
	if depth == 0 {
		depth = 1
	}
	s, c, err := m.running(req.GetSandboxId())
	if err != nil {
		return nil, err
	}
	res, err := c.Filesystem.ListDir(ctx, connect.NewRequest(&fspb.ListDirRequest{Path: req.GetPath(), Depth: depth}))
	if err != nil {
		return nil, m.guestErr(s, c, err, "list %q", req.GetPath())
	}
	out := &pb.ListDirResponse{}
	for _, e := range res.Msg.GetEntries() {
		out.Entries = append(out.Entries, entryInfo(e))
	}
	return out, nil
}

// MakeDir creates a directory and its parents.
func (m *Manager) MakeDir(ctx context.Context, req *pb.MakeDirRequest) (*pb.MakeDirResponse, error) {
	if err := checkGuestPath(req.GetPath()); err != nil {
		return nil, err
	}
	s, c, err := m.running(req.GetSandboxId())
	if err != nil {
		return nil, err
	}
	res, err := c.Filesystem.MakeDir(ctx, connect.NewRequest(&fspb.MakeDirRequest{Path: req.GetPath()}))
	if err != nil {
		return nil, m.guestErr(s, c, err, "make dir %q", req.GetPath())
	}
	return &pb.MakeDirResponse{Entry: entryInfo(res.Msg.GetEntry())}, nil
}

// RemovePath removes a file or a directory tree.
func (m *Manager) RemovePath(ctx context.Context, req *pb.RemovePathRequest) error {
	if err := checkGuestPath(req.GetPath()); err != nil {
		return err
	}
	s, c, err := m.running(req.GetSandboxId())
	if err != nil {
		return err
	}
	// envd, like E2B's, takes a missing path as removed; Wrenn's API says
	// not found, so the agent looks first.
	if _, err := c.Filesystem.Stat(ctx, connect.NewRequest(&fspb.StatRequest{Path: req.GetPath()})); err != nil {
		return m.guestErr(s, c, err, "remove %q", req.GetPath())
	}
	_, err = c.Filesystem.Remove(ctx, connect.NewRequest(&fspb.RemoveRequest{Path: req.GetPath()}))
	return m.guestErr(s, c, err, "remove %q", req.GetPath())
}
