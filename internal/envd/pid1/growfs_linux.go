package pid1

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"unsafe"

	"golang.org/x/sys/unix"
)

// ext4IOCResizeFS is EXT4_IOC_RESIZE_FS, _IOW('f', 16, __u64): grow a
// mounted ext4 to a new block count.
const ext4IOCResizeFS = 0x40086610

// GrowRootFS grows the mounted root ext4 to fill its block device. A
// sandbox's disk (a copy-on-write overlay) may be larger than the image it
// was made from; growing online needs no tools in the image. The kernel
// treats an unchanged size as a no-op. It returns the block counts before
// and after.
func GrowRootFS() (before, after uint64, err error) {
	fd, err := unix.Open("/", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return 0, 0, fmt.Errorf("open /: %w", err)
	}
	defer unix.Close(fd)
	var fs unix.Statfs_t
	if err := unix.Fstatfs(fd, &fs); err != nil {
		return 0, 0, fmt.Errorf("statfs /: %w", err)
	}
	if fs.Type != unix.EXT4_SUPER_MAGIC {
		return 0, 0, errors.New("root is not ext4")
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return 0, 0, fmt.Errorf("stat /: %w", err)
	}
	devBytes, err := blockDeviceBytes(unix.Major(st.Dev), unix.Minor(st.Dev))
	if err != nil {
		return 0, 0, err
	}
	bsize := uint64(fs.Bsize)
	target := devBytes / bsize
	before = fs.Blocks
	if target <= before {
		return before, before, nil
	}
	if _, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), ext4IOCResizeFS, uintptr(unsafe.Pointer(&target))); e != 0 {
		return before, before, fmt.Errorf("grow root ext4 to %d blocks: %w", target, e)
	}
	if err := unix.Fstatfs(fd, &fs); err != nil {
		return before, 0, fmt.Errorf("statfs / after resize: %w", err)
	}
	return before, fs.Blocks, nil
}

// blockDeviceBytes reads a block device's size from sysfs (in 512-byte
// sectors whatever the device's own sector size).
func blockDeviceBytes(major, minor uint32) (uint64, error) {
	p := filepath.Join("/sys/dev/block", fmt.Sprintf("%d:%d", major, minor), "size")
	b, err := os.ReadFile(p)
	if err != nil {
		return 0, fmt.Errorf("size of the root block device: %w", err)
	}
	sectors, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("parse %s: %w", p, err)
	}
	return sectors * 512, nil
}

func growRoot(log *slog.Logger) {
	before, after, err := GrowRootFS()
	if err != nil {
		log.Warn("grow root filesystem", "err", err)
		return
	}
	if after > before {
		log.Info("grew root filesystem", "blocks_before", before, "blocks_after", after)
	}
}
