package names_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/wrenn-dev/wrenn/internal/names"
)

func TestCheckTemplate(t *testing.T) {
	cases := []struct {
		name string
		ok   bool
	}{
		{"minimal", true},
		{"tpl-abcdefghij0123456789", true},
		{"python3.12_slim-v2", true},
		{"0day", true},
		{strings.Repeat("a", names.MaxTemplate), true},
		{strings.Repeat("a", names.MaxTemplate+1), false},
		{"", false},
		{".hidden", false},
		{"..", false},
		{"-flag", false},
		{"_x", false},
		{"Upper", false},
		{"a/b", false},
		{"a b", false},
		{"a\x00", false},
		{"caf\u00e9", false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			err := names.CheckTemplate(c.name)
			if (err == nil) != c.ok {
				t.Fatalf("CheckTemplate(%q) = %v, want ok=%v", c.name, err, c.ok)
			}
			if err != nil && !errors.Is(err, names.ErrTemplate) {
				t.Fatalf("CheckTemplate(%q) = %v, not ErrTemplate", c.name, err)
			}
			if names.ValidTemplate(c.name) != c.ok {
				t.Fatalf("ValidTemplate(%q) disagrees with CheckTemplate", c.name)
			}
		})
	}
}

// FuzzCheckTemplate: an accepted name is always one safe path component.
func FuzzCheckTemplate(f *testing.F) {
	for _, s := range []string{"minimal", "", ".", "..", "a/b", "tpl-x", "A", "a.b-c_d"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if names.CheckTemplate(s) != nil {
			return
		}
		if s == "" || len(s) > names.MaxTemplate || s[0] == '.' || s[0] == '-' || strings.ContainsAny(s, "/\\\x00 ") || strings.ToLower(s) != s {
			t.Fatalf("accepted unsafe name %q", s)
		}
		for _, r := range s {
			if r > 0x7f {
				t.Fatalf("accepted non-ASCII name %q", s)
			}
		}
	})
}
