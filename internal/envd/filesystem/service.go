package filesystem

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"syscall"

	"connectrpc.com/connect"

	"github.com/wrenn-dev/wrenn/internal/envd/rpcutil"
	"github.com/wrenn-dev/wrenn/internal/envd/users"
	"github.com/wrenn-dev/wrenn/internal/envdwire"
	pb "github.com/wrenn-dev/wrenn/proto/envd/filesystem"
	"github.com/wrenn-dev/wrenn/proto/envd/filesystem/filesystemconnect"
)

// MaxListEntries bounds one ListDir answer so a deep listing of a huge tree
// cannot exhaust envd's memory.
const MaxListEntries = 100_000

// Service implements filesystem.Filesystem.
type Service struct {
	log      *slog.Logger
	env      rpcutil.Env
	watchers *watcherSet
}

var _ filesystemconnect.FilesystemHandler = (*Service)(nil)

// NewService returns the filesystem service.
func NewService(log *slog.Logger, env rpcutil.Env) *Service {
	return &Service{log: log, env: env, watchers: newWatcherSet()}
}

func fsErr(what, path string, err error) error {
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return connect.NewError(connect.CodeNotFound, fmt.Errorf("%s %q: no such file or directory", what, path))
	case errors.Is(err, fs.ErrExist):
		return connect.NewError(connect.CodeAlreadyExists, fmt.Errorf("%s %q: already exists", what, path))
	case errors.Is(err, fs.ErrPermission):
		return connect.NewError(connect.CodePermissionDenied, fmt.Errorf("%s %q: permission denied", what, path))
	case errors.Is(err, syscall.ENOTDIR):
		return connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("%s %q: not a directory", what, path))
	case errors.Is(err, syscall.ENOSPC):
		ce := connect.NewError(connect.CodeResourceExhausted, fmt.Errorf("%s %q: no space left on device", what, path))
		ce.Meta().Set(envdwire.ErrorReasonHeader, envdwire.ReasonDiskFull)
		return ce
	case errors.Is(err, syscall.ENAMETOOLONG), errors.Is(err, syscall.EINVAL), errors.Is(err, syscall.EISDIR):
		return connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("%s %q: %w", what, path, err))
	default:
		return connect.NewError(connect.CodeInternal, fmt.Errorf("%s %q: %w", what, path, err))
	}
}

func (s *Service) resolve(h http.Header, p string) (string, *users.User, error) {
	u, err := s.env.User(h)
	if err != nil {
		return "", nil, err
	}
	hp, err := s.env.Resolve(p, u)
	if err != nil {
		return "", nil, err
	}
	return hp, u, nil
}

// Stat implements Filesystem.Stat.
func (s *Service) Stat(ctx context.Context, req *connect.Request[pb.StatRequest]) (*connect.Response[pb.StatResponse], error) {
	p, _, err := s.resolve(req.Header(), req.Msg.GetPath())
	if err != nil {
		return nil, err
	}
	e, err := entryInfo(s.env.Resolver, p)
	if err != nil {
		return nil, fsErr("stat", req.Msg.GetPath(), err)
	}
	return connect.NewResponse(&pb.StatResponse{Entry: e}), nil
}

// MakeDir implements Filesystem.MakeDir: parents are created; an existing
// directory is AlreadyExists.
func (s *Service) MakeDir(ctx context.Context, req *connect.Request[pb.MakeDirRequest]) (*connect.Response[pb.MakeDirResponse], error) {
	p, u, err := s.resolve(req.Header(), req.Msg.GetPath())
	if err != nil {
		return nil, err
	}
	if st, err := os.Stat(p); err == nil {
		if st.IsDir() {
			return nil, connect.NewError(connect.CodeAlreadyExists, fmt.Errorf("directory %q already exists", req.Msg.GetPath()))
		}
		return nil, connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("%q exists and is not a directory", req.Msg.GetPath()))
	}
	if err := MkdirAllAs(p, u); err != nil {
		return nil, fsErr("make directory", req.Msg.GetPath(), err)
	}
	e, err := entryInfo(s.env.Resolver, p)
	if err != nil {
		return nil, fsErr("stat", req.Msg.GetPath(), err)
	}
	return connect.NewResponse(&pb.MakeDirResponse{Entry: e}), nil
}

// MkdirAllAs creates dir and its missing parents owned by u.
func MkdirAllAs(dir string, u *users.User) error {
	if st, err := os.Stat(dir); err == nil {
		if !st.IsDir() {
			return &fs.PathError{Op: "mkdir", Path: dir, Err: syscall.ENOTDIR}
		}
		return nil
	}
	if parent := filepath.Dir(dir); parent != dir {
		if err := MkdirAllAs(parent, u); err != nil {
			return err
		}
	}
	if err := os.Mkdir(dir, 0o755); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return nil
		}
		return err
	}
	if u != nil && !u.IsSelf() {
		return os.Lchown(dir, int(u.UID), int(u.GID))
	}
	return nil
}

// Move implements Filesystem.Move (rename; parents of the destination are created).
func (s *Service) Move(ctx context.Context, req *connect.Request[pb.MoveRequest]) (*connect.Response[pb.MoveResponse], error) {
	src, u, err := s.resolve(req.Header(), req.Msg.GetSource())
	if err != nil {
		return nil, err
	}
	dst, _, err := s.resolve(req.Header(), req.Msg.GetDestination())
	if err != nil {
		return nil, err
	}
	if _, err := os.Lstat(src); err != nil {
		return nil, fsErr("move", req.Msg.GetSource(), err)
	}
	if err := MkdirAllAs(filepath.Dir(dst), u); err != nil {
		return nil, fsErr("create parent of", req.Msg.GetDestination(), err)
	}
	if err := os.Rename(src, dst); err != nil {
		return nil, fsErr("move to", req.Msg.GetDestination(), err)
	}
	e, err := entryInfo(s.env.Resolver, dst)
	if err != nil {
		return nil, fsErr("stat", req.Msg.GetDestination(), err)
	}
	return connect.NewResponse(&pb.MoveResponse{Entry: e}), nil
}

// ListDir implements Filesystem.ListDir. Depth 0 is taken as 1.
func (s *Service) ListDir(ctx context.Context, req *connect.Request[pb.ListDirRequest]) (*connect.Response[pb.ListDirResponse], error) {
	p, _, err := s.resolve(req.Header(), req.Msg.GetPath())
	if err != nil {
		return nil, err
	}
	st, err := os.Stat(p)
	if err != nil {
		return nil, fsErr("list", req.Msg.GetPath(), err)
	}
	if !st.IsDir() {
		return nil, connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("list %q: not a directory", req.Msg.GetPath()))
	}
	depth := int(req.Msg.GetDepth())
	if depth < 1 {
		depth = 1
	}
	res := &pb.ListDirResponse{}
	if err := s.list(ctx, p, depth, res); err != nil {
		return nil, err
	}
	return connect.NewResponse(res), nil
}

func (s *Service) list(ctx context.Context, dir string, depth int, res *pb.ListDirResponse) error {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return fsErr("list", s.env.Resolver.Client(dir), err)
	}
	for _, de := range ents {
		if err := ctx.Err(); err != nil {
			return connect.NewError(connect.CodeCanceled, err)
		}
		if len(res.Entries) >= MaxListEntries {
			return connect.NewError(connect.CodeResourceExhausted, fmt.Errorf("more than %d entries: list with a smaller depth", MaxListEntries))
		}
		full := filepath.Join(dir, de.Name())
		if s.env.Uploads.IsStaging(full) {
			continue // envd's own, like the watchers it is hidden from
		}
		info, err := de.Info()
		if err != nil {
			continue // removed while listing
		}
		res.Entries = append(res.Entries, entryFromInfo(s.env.Resolver, full, info))
		if depth > 1 && de.IsDir() {
			if err := s.list(ctx, full, depth-1, res); err != nil {
				var ce *connect.Error
				if errors.As(err, &ce) && (ce.Code() == connect.CodePermissionDenied || ce.Code() == connect.CodeNotFound) {
					continue // unreadable or vanished subdirectory
				}
				return err
			}
		}
	}
	return nil
}

// Remove implements Filesystem.Remove (recursive). A path that does not
// exist is already removed: success, as os.RemoveAll and E2B's envd answer.
func (s *Service) Remove(ctx context.Context, req *connect.Request[pb.RemoveRequest]) (*connect.Response[pb.RemoveResponse], error) {
	p, _, err := s.resolve(req.Header(), req.Msg.GetPath())
	if err != nil {
		return nil, err
	}
	if err := os.RemoveAll(p); err != nil {
		return nil, fsErr("remove", req.Msg.GetPath(), err)
	}
	return connect.NewResponse(&pb.RemoveResponse{}), nil
}
