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

	"github.com/wrenn-dev/wrenn/internal/envd/filemeta"
	"github.com/wrenn-dev/wrenn/internal/envd/paths"
	pb "github.com/wrenn-dev/wrenn/proto/envd/filesystem"
)

// entryInfo describes the host path p. A symlink is described by what it
// resolves to (type, size, mode, owner, metadata) with the resolved
// absolute path as its target, as E2B's envd does; a dangling one as a
// symlink.
func entryInfo(r paths.Resolver, p string) (*pb.EntryInfo, error) {
	st, err := os.Lstat(p)
	if err != nil {
		return nil, err
	}
	return entryFromInfo(r, p, st), nil
}

// entryFromInfo is entryInfo for an Lstat result already at hand.
func entryFromInfo(r paths.Resolver, p string, st fs.FileInfo) *pb.EntryInfo {
	e := &pb.EntryInfo{Name: st.Name(), Path: r.Client(p)}
	if e.Name == "" || e.Name == "." {
		e.Name = filepath.Base(e.Path)
	}
	described := p
	if st.Mode()&fs.ModeSymlink != 0 {
		if target, tst, ok := resolveLink(p); ok {
			t := r.Client(target)
			e.SymlinkTarget = &t
			st, described = tst, target
		} else if target, err := os.Readlink(p); err == nil {
			if !filepath.IsAbs(target) {
				target = filepath.Join(filepath.Dir(p), target)
			}
			t := r.Client(filepath.Clean(target))
			e.SymlinkTarget = &t
		}
	}
	e.Size = st.Size()
	e.Mode = uint32(st.Mode().Perm())
	e.Permissions = st.Mode().String()
	e.ModifiedTime = timestamppb.New(st.ModTime())
	switch {
	case st.Mode()&fs.ModeSymlink != 0:
		e.Type = pb.FileType_FILE_TYPE_SYMLINK
	case st.IsDir():
		e.Type = pb.FileType_FILE_TYPE_DIRECTORY
	default:
		e.Type = pb.FileType_FILE_TYPE_FILE
	}
	if sys, ok := st.Sys().(*syscall.Stat_t); ok {
		e.Owner = userName(sys.Uid)
		e.Group = groupName(sys.Gid)
	}
	// Unreadable metadata leaves the entry without it rather than failing
	// a listing.
	e.Metadata, _ = filemeta.Read(described)
	return e
}

// resolveLink returns the absolute path a symlink finally names and its
// Stat; ok is false for a dangling link or a loop.
func resolveLink(p string) (string, fs.FileInfo, bool) {
	target, err := filepath.EvalSymlinks(p)
	if err != nil {
		return "", nil, false
	}
	target, err = filepath.Abs(target)
	if err != nil {
		return "", nil, false
	}
	st, err := os.Stat(target)
	if err != nil {
		return "", nil, false
	}
	return target, st, true
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
