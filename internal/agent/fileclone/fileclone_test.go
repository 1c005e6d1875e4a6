package fileclone

import (
	"bytes"
	"context"
	"crypto/rand"
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

// A sparse image: 64 MiB with two 1 MiB data ranges.
func sparseImage(t *testing.T, path string) []byte {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(64 << 20); err != nil {
		t.Fatal(err)
	}
	chunk := make([]byte, 1<<20)
	if _, err := rand.Read(chunk); err != nil {
		t.Fatal(err)
	}
	for _, off := range []int64{4 << 20, 40 << 20} {
		if _, err := f.WriteAt(chunk, off); err != nil {
			t.Fatal(err)
		}
	}
	return chunk
}

func allocated(t *testing.T, path string) int64 {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Blocks * 512
}

func TestAtomicKeepsContentAndHoles(t *testing.T) {
	dir := t.TempDir()
	src, dst := filepath.Join(dir, "src"), filepath.Join(dir, "dst")
	sparseImage(t, src)
	// An older dst is replaced.
	if err := os.WriteFile(dst, []byte("old"), 0o644); err != nil {
		t.Fatal(err)
	}
	method, err := Atomic(context.Background(), src, dst, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	a, _ := os.ReadFile(src)
	b, _ := os.ReadFile(dst)
	if !bytes.Equal(a, b) {
		t.Fatal("copy differs from its source")
	}
	st, err := os.Stat(dst)
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("dst mode %v, %v", st.Mode(), err)
	}
	// Holes stay holes (a reflink shares blocks; either way far below 64 MiB).
	if got := allocated(t, dst); got > 8<<20 {
		t.Fatalf("%s copy allocates %d bytes of a 2 MiB-data image", method, got)
	}
	if left, _ := filepath.Glob(filepath.Join(dir, ".dst.tmp-*")); len(left) != 0 {
		t.Fatalf("temporary files left: %v", left)
	}
}

func TestAtomicFailureLeavesNothing(t *testing.T) {
	dir := t.TempDir()
	dst := filepath.Join(dir, "dst")
	if _, err := Atomic(context.Background(), filepath.Join(dir, "missing"), dst, 0o600); err == nil {
		t.Fatal("copying a missing file succeeded")
	}
	src := filepath.Join(dir, "src")
	sparseImage(t, src)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	// A cancelled copy may still finish by reflink; a sparse one stops.
	if m, err := Atomic(ctx, src, dst, 0o600); err == nil && m != Reflink {
		t.Fatalf("cancelled sparse copy succeeded (%s)", m)
	}
	if left, _ := filepath.Glob(filepath.Join(dir, ".dst.tmp-*")); len(left) != 0 {
		t.Fatalf("temporary files left: %v", left)
	}
}
