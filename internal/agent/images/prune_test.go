package images

import (
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"
)

func TestPruneRootfs(t *testing.T) {
	p := NewPaths(t.TempDir())
	dir := p.TemplateDir(MinimalTemplate)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	// Six images, oldest first; the newest is current.
	keys := []string{"k1", "k2", "k3", "k4", "k5", "k6"}
	now := time.Now()
	for i, k := range keys {
		f := p.RootfsFile(MinimalTemplate, k)
		if err := os.WriteFile(f, []byte("ext4"), 0o644); err != nil {
			t.Fatal(err)
		}
		mod := now.Add(time.Duration(i-len(keys)) * time.Hour)
		if err := os.Chtimes(f, mod, mod); err != nil {
			t.Fatal(err)
		}
	}
	// A sandbox disk whose header names k2 as its backing file, and a
	// snapshot template's metadata naming k3.
	write := func(path string, data []byte) {
		t.Helper()
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write(filepath.Join(p.Dir, "sandboxes", "sb-a", "rootfs.disk"), append([]byte("QFI\xfb\x00\x00\x00\x03"), []byte(p.RootfsFile(MinimalTemplate, "k2"))...))
	write(filepath.Join(p.Dir, "templates", "tpl-x", "snapshot", "meta.json"), []byte(`{"disk_base":"rootfs-k3.ext4"}`))

	current := p.RootfsFile(MinimalTemplate, "k6")
	removed, err := p.PruneRootfs(MinimalTemplate, current)
	if err != nil {
		t.Fatal(err)
	}
	var gotRemoved []string
	for _, r := range removed {
		gotRemoved = append(gotRemoved, filepath.Base(r))
	}
	slices.Sort(gotRemoved)
	// k4, k5: the two newest superseded; k2, k3: in use; k6: current.
	if want := []string{"rootfs-k1.ext4"}; !slices.Equal(gotRemoved, want) {
		t.Fatalf("removed %v, want %v", gotRemoved, want)
	}
	for _, k := range []string{"k2", "k3", "k4", "k5", "k6"} {
		if _, err := os.Stat(p.RootfsFile(MinimalTemplate, k)); err != nil {
			t.Fatalf("rootfs-%s.ext4 was removed: %v", k, err)
		}
	}
	// Nothing more to do on a second run.
	if again, err := p.PruneRootfs(MinimalTemplate, current); err != nil || len(again) != 0 {
		t.Fatalf("second prune removed %v, %v", again, err)
	}
}
