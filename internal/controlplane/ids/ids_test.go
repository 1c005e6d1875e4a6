package ids

import (
	"regexp"
	"testing"
)

func TestNewAndValid(t *testing.T) {
	dnsSafe := regexp.MustCompile(`^[a-z]+-[a-z2-7]{20}$`)
	seen := map[string]bool{}
	for range 1000 {
		id := New(Sandbox)
		if !dnsSafe.MatchString(id) || !Valid(Sandbox, id) || Valid(User, id) || seen[id] {
			t.Fatalf("bad or repeated id %q", id)
		}
		seen[id] = true
	}
	for _, bad := range []string{"", "sb-", "sb-short", "sb-AAAAAAAAAAAAAAAAAAAA", "sb-aaaaaaaaaaaaaaaaaaa1", "sb-aaaaaaaaaaaaaaaaaaaaa", "xx-aaaaaaaaaaaaaaaaaaaa"} {
		if Valid(Sandbox, bad) {
			t.Errorf("%q accepted", bad)
		}
	}
}
