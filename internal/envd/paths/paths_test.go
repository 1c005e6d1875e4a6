package paths

import (
	"errors"
	"path/filepath"
	"strings"
	"testing"
)

func TestResolve(t *testing.T) {
	tests := []struct {
		root, path, home string
		want             string
		wantErr          bool
	}{
		{"", "/a/b", "/home/u", "/a/b", false},
		{"", "a/b", "/home/u", "/home/u/a/b", false},
		{"", "~", "/home/u", "/home/u", false},
		{"", "~/x", "/home/u", "/home/u/x", false},
		{"", "~x", "/home/u", "/home/u/~x", false},
		{"", "../../etc", "/home/u", "/etc", false},
		{"", "/a/./b/../c/", "/", "/a/c", false},
		{"", "rel", "", "/rel", false},
		{"", "rel", "not-abs", "/rel", false},
		{"/srv/r", "/etc/passwd", "/root", "/srv/r/etc/passwd", false},
		{"/srv/r", "/../../..", "/root", "/srv/r", false},
		{"/srv/r", "../../x", "/home/u", "/srv/r/x", false},
		{"/srv/r", "~/f", "/home/u", "/srv/r/home/u/f", false},
		{"", "", "/", "", true},
		{"", "a\x00b", "/", "", true},
	}
	for _, tc := range tests {
		got, err := Resolver{Root: tc.root}.Resolve(tc.path, tc.home)
		if (err != nil) != tc.wantErr || got != tc.want {
			t.Errorf("Resolve(root %q, %q, home %q) = %q, %v; want %q (err %v)", tc.root, tc.path, tc.home, got, err, tc.want, tc.wantErr)
		}
		if err != nil && !errors.Is(err, ErrInvalid) {
			t.Errorf("error %v does not wrap ErrInvalid", err)
		}
	}
}

func TestClient(t *testing.T) {
	r := Resolver{Root: "/srv/r"}
	for host, want := range map[string]string{"/srv/r/a": "/a", "/srv/r": "/", "/other": "/other"} {
		if got := r.Client(host); got != want {
			t.Errorf("Client(%q) = %q, want %q", host, got, want)
		}
	}
	if got := (Resolver{}).Client("/x/y"); got != "/x/y" {
		t.Errorf("no root: %q", got)
	}
}

// FuzzResolve checks the invariants every client path must keep: no panic,
// an absolute clean result, inside Root when there is one, and a round trip
// through Client.
func FuzzResolve(f *testing.F) {
	for _, s := range []string{"", "/", "a", "~", "~/", "../..", "/a/../../b", "a\x00", "~user/x", "//x//y/", ".", "..", "/../..//./x"} {
		f.Add(s, "/home/u", "/srv/root")
	}
	f.Fuzz(func(t *testing.T, p, home, root string) {
		if root != "" {
			root = filepath.Clean("/" + root)
		}
		r := Resolver{Root: root}
		got, err := r.Resolve(p, home)
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("error %v does not wrap ErrInvalid", err)
			}
			return
		}
		if !filepath.IsAbs(got) || filepath.Clean(got) != got {
			t.Fatalf("Resolve(%q, %q) = %q: not absolute and clean", p, home, got)
		}
		if strings.IndexByte(got, 0) >= 0 {
			t.Fatalf("NUL in %q", got)
		}
		if root != "" {
			if got != root && !strings.HasPrefix(got, strings.TrimSuffix(root, "/")+"/") {
				t.Fatalf("Resolve(%q) = %q escapes root %q", p, got, root)
			}
			back := r.Client(got)
			again, err := r.Resolve(back, "/")
			if err != nil || again != got {
				t.Fatalf("round trip %q -> %q -> %q (%v)", got, back, again, err)
			}
		}
	})
}
