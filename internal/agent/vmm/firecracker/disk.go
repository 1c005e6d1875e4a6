package firecracker

import (
	"context"

	"github.com/wrenn-dev/wrenn/internal/agent/fileclone"
)

// copyDisk copies a raw disk image to dst without filling holes (a reflink
// where the filesystem allows, else the data ranges only); dst appears only
// when complete.
func copyDisk(ctx context.Context, src, dst string) error {
	_, err := fileclone.Atomic(ctx, src, dst, 0o640)
	return err
}
