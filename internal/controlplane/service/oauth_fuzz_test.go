package service

import (
	"net/url"
	"testing"
)

// No accepted redirect leaves the dashboard: whatever a caller passes, the
// landing URL keeps the dashboard's scheme, host and path prefix.
func FuzzRedirectStaysOnTheDashboard(f *testing.F) {
	for _, s := range []string{"/", "/sandboxes?tab=1", "//evil.example", "/\\evil.example", "https://evil.example",
		"/%2F%2Fevil.example", "/@evil.example", "/.//evil", "\t/x", "/x#y", "javascript:alert(1)"} {
		f.Add(s)
	}
	o := &OAuth{cfg: OAuthConfig{DashboardURL: "https://dash.example/app"}}
	f.Fuzz(func(t *testing.T, redirect string) {
		if checkRedirect(redirect) != nil {
			return
		}
		to, err := url.Parse(o.dashboard(redirect, "oauth_code", "c"))
		if err != nil {
			t.Fatalf("accepted %q lands on an unparsable URL: %v", redirect, err)
		}
		if to.Scheme != "https" || to.Host != "dash.example" || to.User != nil || len(to.Path) < 4 || to.Path[:4] != "/app" {
			t.Fatalf("accepted %q lands on %s", redirect, to)
		}
		if to.Query().Get("oauth_code") != "" {
			t.Fatalf("accepted %q puts the code in the query: %s", redirect, to)
		}
	})
}
