package sandbox

import (
	"io/fs"
	"syscall"
)

// allocated is the space a file takes on disk (sparse files count less).
func allocated(st fs.FileInfo) int64 {
	if sys, ok := st.Sys().(*syscall.Stat_t); ok {
		return sys.Blocks * 512
	}
	return st.Size()
}
