package proxy

import (
	"net/http"
	"testing"
)

func TestStripCredentials(t *testing.T) {
	wrenn := func(tok string) bool { return tok == "wrenn-jwt" }
	cases := []struct {
		name       string
		in         http.Header
		wantAuth   string
		wantCookie string
	}{
		{"api key header", http.Header{"X-Api-Key": {"wrn_x"}}, "", ""},
		{"wrenn bearer", http.Header{"Authorization": {"Bearer wrenn-jwt"}}, "", ""},
		{"wrenn bearer, other case", http.Header{"Authorization": {"bearer  wrenn-jwt "}}, "", ""},
		{"the app's bearer", http.Header{"Authorization": {"Bearer app-token"}}, "Bearer app-token", ""},
		{"basic auth", http.Header{"Authorization": {"Basic dXNlcjpwdw=="}}, "Basic dXNlcjpwdw==", ""},
		{"wrenn cookies only", http.Header{"Cookie": {"wrenn_session=s; wrenn_csrf=c"}}, "", ""},
		{"mixed cookies on two lines", http.Header{"Cookie": {"a=1; wrenn_preview=p", "wrenn_session=s;b=2"}}, "", "a=1; b=2"},
		{"app cookies", http.Header{"Cookie": {"sid=abc; theme=dark"}}, "", "sid=abc; theme=dark"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h := tc.in.Clone()
			stripCredentials(h, wrenn)
			if h.Get("X-API-Key") != "" || h.Get("Authorization") != tc.wantAuth || h.Get("Cookie") != tc.wantCookie || len(h.Values("Cookie")) > 1 {
				t.Fatalf("after stripping: %v; want Authorization %q, Cookie %q", h, tc.wantAuth, tc.wantCookie)
			}
		})
	}
}
