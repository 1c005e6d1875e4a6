// Package filesystem implements the filesystem.Filesystem Connect service.
package filesystem

import (
	"io/fs"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"syscall"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/wrenn-dev/wrenn/internal/envd/paths"
	pb "github.com/wrenn-dev/wrenn/proto/envd/filesystem"
)

// entryInfo describes the host path p (not following a final symlink).
func entryInfo(r paths.Resolver, p string) (*pb.EntryInfo, error) {
	st, err := os.Lstat(p)
	if err != nil {
		return nil, err
	}
	return entryFromInfo(r, p, st), nil
}

func entryFromInfo(r paths.Resolver, p string, st fs.FileInfo) *pb.EntryInfo {
	e := &pb.EntryInfo{
		Name:         st.Name(),
		Path:         r.Client(p),
		Size:         st.Size(),
		Mode:         uint32(st.Mode().Perm()),
		Permissions:  st.Mode().String(),
		ModifiedTime: timestamppb.New(st.ModTime()),
	}
	switch {
	case st.Mode()&fs.ModeSymlink != 0:
		e.Type = pb.FileType_FILE_TYPE_SYMLINK
		if target, err := os.Readlink(p); err == nil {
			e.SymlinkTarget = &target
		}
	case st.IsDir():
		e.Type = pb.FileType_FILE_TYPE_DIRECTORY
	default:
		e.Type = pb.FileType_FILE_TYPE_FILE
	}
	if sys, ok := st.Sys().(*syscall.Stat_t); ok {
		e.Owner = userName(sys.Uid)
		e.Group = groupName(sys.Gid)
	}
	if e.Name == "" || e.Name == "." {
		e.Name = filepath.Base(e.Path)
	}
	return e
}

func userName(uid uint32) string {
	id := strconv.FormatUint(uint64(uid), 10)
	if u, err := user.LookupId(id); err == nil {
		return u.Username
	}
	return id
}

func groupName(gid uint32) string {
	id := strconv.FormatUint(uint64(gid), 10)
	if g, err := user.LookupGroupId(id); err == nil {
		return g.Name
	}
	return id
}
