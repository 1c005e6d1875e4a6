package uploads

import (
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"testing"

	"github.com/wrenn-dev/wrenn/internal/testenv"
)

func TestUnescapeAndWithin(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"/mnt/plain", "/mnt/plain"},
		{`/mnt/with\040space`, "/mnt/with space"},
		{`/mnt/tab\011x`, "/mnt/tab\tx"},
		{`/mnt/bad\09`, `/mnt/bad\09`},
		{`/mnt/end\04`, `/mnt/end\04`},
	} {
		if got := unescape(tc.in); got != tc.want {
			t.Errorf("unescape(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
	for _, tc := range []struct {
		p, dir string
		want   bool
	}{
		{"/a/b", "/", true},
		{"/a/b", "/a", true},
		{"/a", "/a", true},
		{"/ab", "/a", false},
		{"/", "/a", false},
	} {
		if got := within(tc.p, tc.dir); got != tc.want {
			t.Errorf("within(%q, %q) = %v", tc.p, tc.dir, got)
		}
	}
}

func TestCreateStagesOutsideTheTarget(t *testing.T) {
	testenv.Require(t, os.Geteuid() == 0, "needs root: the staging directory is made at the root of the mount")
	a := New(slog.New(slog.NewTextHandler(io.Discard, nil)))
	dir := t.TempDir()
	target := filepath.Join(dir, "f")
	f, err := a.Create(target, 0o640)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Abort()
	staging := filepath.Dir(f.TempName())
	if filepath.Base(staging) != StagingName || staging == dir {
		t.Fatalf("temporary file %s is not in a staging directory", f.TempName())
	}
	for _, tc := range []struct {
		p    string
		want bool
	}{
		{staging, true},
		{f.TempName(), true},
		{dir, false},
		{target, false},
		{filepath.Dir(staging), false},
	} {
		if got := a.IsStaging(tc.p); got != tc.want {
			t.Errorf("IsStaging(%s) = %v, want %v", tc.p, got, tc.want)
		}
	}
	f.Write([]byte("x"))
	if err := f.Commit(); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(target)
	if err != nil || st.Mode().Perm() != 0o640 {
		t.Fatalf("target: %v %v", st, err)
	}
}
