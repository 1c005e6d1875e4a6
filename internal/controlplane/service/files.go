package service

import (
	"context"
	"errors"
	"io"
	"net/http"
	"strings"
	"time"
	"unicode/utf8"

	"connectrpc.com/connect"

	"github.com/wrenn-dev/wrenn/internal/controlplane/auth"
	pb "github.com/wrenn-dev/wrenn/proto/hostagent/v1"
)

// FileChunkSize is how much of an upload goes into one stream message.
const FileChunkSize = 64 << 10

// CheckPath validates a path inside a sandbox.
func CheckPath(p string) error {
	if p == "" {
		return Invalid("path", "path is required")
	}
	if len(p) > 4096 || strings.ContainsRune(p, 0) || !utf8.ValidString(p) {
		return Invalid("path", "path must be UTF-8 text of at most 4096 bytes without NUL")
	}
	return nil
}

// WriteResult is the answer to a file upload.
type WriteResult struct {
	Path string `json:"path"`
	Size int64  `json:"size"`
}

// WriteFile streams r into path, chunk by chunk: the file is never held
// whole in memory. When reading r fails (the upload limit, a client that
// breaks off) the stream to the agent is aborted, not closed, so the agent
// and envd see an incomplete upload and the target keeps its old content.
func (s *Service) WriteFile(ctx context.Context, a auth.AuthContext, id, path string, mode uint32, r io.Reader) (WriteResult, error) {
	if err := CheckPath(path); err != nil {
		return WriteResult{}, err
	}
	if mode > 0o7777 {
		return WriteResult{}, Invalid("mode", "mode must be Unix permission bits (at most 07777)")
	}
	sb, c, err := s.runningSandbox(ctx, a, id)
	if err != nil {
		return WriteResult{}, err
	}
	// Cancelling the stream's context resets it. A clean close would tell the
	// agent the upload is complete, so after a read error the stream is
	// never closed (CloseAndReceive would close the request body cleanly,
	// racing the reset).
	ctx, abort := context.WithCancel(ctx)
	defer abort()
	st := c.WriteFileStream(ctx)
	if err := st.Send(&pb.WriteFileStreamRequest{Part: &pb.WriteFileStreamRequest_Header_{Header: &pb.WriteFileStreamRequest_Header{SandboxId: sb.ID, Path: path, Mode: mode}}}); err != nil && !errors.Is(err, io.EOF) {
		_, _ = st.CloseAndReceive()
		return WriteResult{}, FromAgent("write the file", err)
	}
	buf := make([]byte, FileChunkSize)
	for {
		n, rerr := r.Read(buf)
		if n > 0 {
			if err := st.Send(&pb.WriteFileStreamRequest{Part: &pb.WriteFileStreamRequest_Chunk{Chunk: buf[:n]}}); err != nil {
				// io.EOF: the agent ended the stream; its error comes from CloseAndReceive.
				break
			}
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			abort()
			return WriteResult{}, readErr(rerr)
		}
	}
	resp, err := st.CloseAndReceive()
	if err != nil {
		return WriteResult{}, FromAgent("write the file", err)
	}
	return WriteResult{Path: resp.Msg.GetPath(), Size: resp.Msg.GetSize()}, nil
}

// readErr classifies a failure reading the client's upload.
func readErr(err error) error {
	var mbe *http.MaxBytesError
	if errors.As(err, &mbe) {
		return &Error{Kind: CodeTooLarge.Kind(), Code: CodeTooLarge, Message: "the upload is larger than allowed"}
	}
	return &Error{Kind: CodeInvalidRequest.Kind(), Code: CodeInvalidRequest, Field: "file", Message: "reading the upload failed: " + err.Error()}
}

// FileReader streams a file out of a sandbox.
type FileReader struct {
	// Size is the total size, or -1 when the agent did not say.
	Size   int64
	stream *connect.ServerStreamForClient[pb.ReadFileStreamResponse]
	buf    []byte
}

func (f *FileReader) Read(p []byte) (int, error) {
	for len(f.buf) == 0 {
		if !f.stream.Receive() {
			if err := f.stream.Err(); err != nil {
				return 0, err
			}
			return 0, io.EOF
		}
		f.buf = f.stream.Msg().GetChunk()
	}
	n := copy(p, f.buf)
	f.buf = f.buf[n:]
	return n, nil
}

// Close ends the stream.
func (f *FileReader) Close() error { return f.stream.Close() }

// ReadFile opens path for streaming. Errors that the agent reports before
// the first byte (not found, is a directory) come back here, typed.
func (s *Service) ReadFile(ctx context.Context, a auth.AuthContext, id, path string) (*FileReader, error) {
	if err := CheckPath(path); err != nil {
		return nil, err
	}
	sb, c, err := s.runningSandbox(ctx, a, id)
	if err != nil {
		return nil, err
	}
	st, err := c.ReadFileStream(ctx, connect.NewRequest(&pb.ReadFileStreamRequest{SandboxId: sb.ID, Path: path}))
	if err != nil {
		return nil, FromAgent("read the file", err)
	}
	f := &FileReader{Size: -1, stream: st}
	if !st.Receive() {
		err := st.Err()
		_ = st.Close()
		if err == nil {
			return &FileReader{Size: 0, stream: st}, nil
		}
		return nil, FromAgent("read the file", err)
	}
	switch p := st.Msg().GetPart().(type) {
	case *pb.ReadFileStreamResponse_Size:
		f.Size = p.Size
	case *pb.ReadFileStreamResponse_Chunk:
		f.buf = p.Chunk
	}
	return f, nil
}

// Entry is a directory entry.
type Entry struct {
	Name          string     `json:"name"`
	Path          string     `json:"path"`
	Type          string     `json:"type"`
	Size          int64      `json:"size"`
	Mode          uint32     `json:"mode"`
	ModifiedAt    *time.Time `json:"modified_at"`
	SymlinkTarget string     `json:"symlink_target,omitempty"`
}

func toEntry(e *pb.EntryInfo) Entry {
	out := Entry{Name: e.GetName(), Path: e.GetPath(), Type: e.GetType(), Size: e.GetSize(), Mode: e.GetMode(), SymlinkTarget: e.GetSymlinkTarget()}
	if e.GetModifiedAt() != nil {
		t := e.GetModifiedAt().AsTime()
		out.ModifiedAt = &t
	}
	return out
}

// PathInput is the body of the file endpoints.
type PathInput struct {
	Path  string `json:"path"`
	Depth *int   `json:"depth,omitempty"`
}

// ListDir lists a directory (depth 1 by default, at most 10).
func (s *Service) ListDir(ctx context.Context, a auth.AuthContext, id string, in PathInput) ([]Entry, error) {
	if err := CheckPath(in.Path); err != nil {
		return nil, err
	}
	depth := 1
	if in.Depth != nil {
		depth = *in.Depth
	}
	if depth < 1 || depth > 10 {
		return nil, Invalid("depth", "depth must be between 1 and 10")
	}
	sb, c, err := s.runningSandbox(ctx, a, id)
	if err != nil {
		return nil, err
	}
	resp, err := c.ListDir(ctx, connect.NewRequest(&pb.ListDirRequest{SandboxId: sb.ID, Path: in.Path, Depth: uint32(depth)}))
	if err != nil {
		return nil, FromAgent("list the directory", err)
	}
	out := make([]Entry, 0, len(resp.Msg.GetEntries()))
	for _, e := range resp.Msg.GetEntries() {
		out = append(out, toEntry(e))
	}
	return out, nil
}

// MakeDir creates a directory and its parents.
func (s *Service) MakeDir(ctx context.Context, a auth.AuthContext, id string, in PathInput) (Entry, error) {
	if err := CheckPath(in.Path); err != nil {
		return Entry{}, err
	}
	sb, c, err := s.runningSandbox(ctx, a, id)
	if err != nil {
		return Entry{}, err
	}
	resp, err := c.MakeDir(ctx, connect.NewRequest(&pb.MakeDirRequest{SandboxId: sb.ID, Path: in.Path}))
	if err != nil {
		return Entry{}, FromAgent("make the directory", err)
	}
	return toEntry(resp.Msg.GetEntry()), nil
}

// RemovePath removes a file or a directory tree.
func (s *Service) RemovePath(ctx context.Context, a auth.AuthContext, id string, in PathInput) error {
	if err := CheckPath(in.Path); err != nil {
		return err
	}
	sb, c, err := s.runningSandbox(ctx, a, id)
	if err != nil {
		return err
	}
	if _, err := c.RemovePath(ctx, connect.NewRequest(&pb.RemovePathRequest{SandboxId: sb.ID, Path: in.Path})); err != nil {
		return FromAgent("remove the path", err)
	}
	return nil
}
