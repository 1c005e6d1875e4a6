package users

import (
	"errors"
	"os"
	"testing"
)

func TestFromBasicAuth(t *testing.T) {
	tests := []struct {
		header   string
		name     string
		ok, fail bool
	}{
		{"", "", false, false},
		{"Basic dXNlcjo=", "user", true, false},     // "user:"
		{"basic cm9vdDpwdw==", "root", true, false}, // "root:pw", password ignored
		{"Basic Og==", "", false, false},            // ":"
		{"Bearer abc", "", false, true},
		{"Basic", "", false, true},
		{"Basic ***", "", false, true},
	}
	for _, tc := range tests {
		name, ok, err := FromBasicAuth(tc.header)
		if name != tc.name || ok != tc.ok || (err != nil) != tc.fail {
			t.Errorf("FromBasicAuth(%q) = %q %v %v", tc.header, name, ok, err)
		}
	}
}

func FuzzFromBasicAuth(f *testing.F) {
	for _, s := range []string{"Basic dXNlcjo=", "Basic ", "Basic Og==", "x y z"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, h string) {
		name, ok, err := FromBasicAuth(h)
		if err != nil && ok {
			t.Fatal("ok with an error")
		}
		if ok && name == "" {
			t.Fatal("ok with an empty name")
		}
	})
}

func TestLookup(t *testing.T) {
	self, err := Lookup("")
	if err != nil || !self.IsSelf() || self.Home == "" {
		t.Fatalf("self: %+v %v", self, err)
	}
	if _, err := Lookup("no-such-user-wrenn"); !errors.Is(err, ErrUnknown) {
		t.Errorf("unknown user: %v", err)
	}
	if os.Getuid() == 0 {
		n, err := Lookup("nobody")
		if err != nil || n.UID != 65534 || n.IsSelf() {
			t.Errorf("nobody: %+v %v", n, err)
		}
	}
}
