package proxyurl

import (
	"strings"
	"testing"
	"time"

	"github.com/wrenn-dev/wrenn/internal/controlplane/service"
)

const id = "sb-abcdefghijklmnopqrst"

func names(t testing.TB, publicURL string, now func() time.Time) *Names {
	t.Helper()
	n, err := New("", publicURL, []byte(strings.Repeat("k", 32)), now)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func TestParse(t *testing.T) {
	n := names(t, "http://localhost:8000", nil)
	cases := []struct {
		host  string
		proxy bool
		want  Target
		code  service.Code
	}{
		{host: "8080-" + id + ".localhost", proxy: true, want: Target{id, 8080}},
		{host: "8080-" + id + ".localhost:8000", proxy: true, want: Target{id, 8080}},
		{host: "8080-" + strings.ToUpper(id) + ".LOCALHOST.", proxy: true, want: Target{id, 8080}},
		{host: "1-" + id + ".localhost", proxy: true, want: Target{id, 1}},
		{host: "65535-" + id + ".localhost", proxy: true, want: Target{id, 65535}},
		{host: "49983-" + id + ".localhost", proxy: true, want: Target{id, 49983}}, // refused later, by CheckProxyPort
		{host: "0-" + id + ".localhost", proxy: true, code: service.CodePortNotAllowed},
		{host: "65536-" + id + ".localhost", proxy: true, code: service.CodePortNotAllowed},
		{host: "99999999999999999999-" + id + ".localhost", proxy: true, code: service.CodePortNotAllowed},
		{host: id + ".localhost", proxy: true, code: service.CodeInvalidRequest},
		{host: "-" + id + ".localhost", proxy: true, code: service.CodeInvalidRequest},
		{host: "8080-.localhost", proxy: true, code: service.CodeInvalidRequest},
		{host: "+80-" + id + ".localhost", proxy: true, code: service.CodeInvalidRequest},
		{host: "8o80-" + id + ".localhost", proxy: true, code: service.CodeInvalidRequest},
		{host: "8080-sb-short.localhost", proxy: true, code: service.CodeInvalidRequest},
		{host: "8080-tm-abcdefghijklmnopqrst.localhost", proxy: true, code: service.CodeInvalidRequest},
		{host: "8080-" + id + "-x.localhost", proxy: true, code: service.CodeInvalidRequest},
		// Not proxy hosts: the API's, others, deeper names.
		{host: "localhost:8000"},
		{host: "localhost"},
		{host: "127.0.0.1:8000"},
		{host: ""},
		{host: "a.8080-" + id + ".localhost"},
		{host: "8080-" + id + ".localhost.example.com"},
		{host: "8080-" + id + ".notlocalhost"},
	}
	for _, tc := range cases {
		t.Run(tc.host, func(t *testing.T) {
			if got := n.IsProxyHost(tc.host); got != tc.proxy {
				t.Fatalf("IsProxyHost = %v, want %v", got, tc.proxy)
			}
			if !tc.proxy {
				return
			}
			got, err := n.Parse(tc.host)
			if tc.code != "" {
				se, ok := service.AsError(err)
				if !ok || se.Code != tc.code {
					t.Fatalf("Parse = %+v, %v; want code %s", got, err, tc.code)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("Parse = %+v, %v; want %+v", got, err, tc.want)
			}
			// What Host formats, Parse reads back.
			if back, err := n.Parse(n.Host(got.SandboxID, got.Port)); err != nil || back != got {
				t.Fatalf("Parse(Host(%+v)) = %+v, %v", got, back, err)
			}
		})
	}
}

// The control plane's own host is never a sandbox's, even under the domain.
func TestAPIHostIsNotAProxyHost(t *testing.T) {
	n, err := New("example.com", "https://wrenn.example.com", []byte(strings.Repeat("k", 32)), nil)
	if err != nil {
		t.Fatal(err)
	}
	if n.IsProxyHost("wrenn.example.com") || !n.IsProxyHost("8080-"+id+".example.com") {
		t.Fatal("the API host is taken for a sandbox's, or a sandbox's is not")
	}
	if got := n.URL(id, 8080, "9999"); got != "https://8080-"+id+".example.com/" {
		t.Fatalf("URL = %s", got)
	}
}

func FuzzParse(f *testing.F) {
	for _, s := range []string{"8080-" + id + ".localhost", "0-x.localhost", "-.localhost", "65536-" + id + ".localhost:1", "[::1]:80", "a-b-c.localhost."} {
		f.Add(s)
	}
	n := names(f, "", nil)
	f.Fuzz(func(t *testing.T, host string) {
		if !n.IsProxyHost(host) {
			return
		}
		got, err := n.Parse(host)
		if err != nil {
			se, ok := service.AsError(err)
			if !ok || (se.Code != service.CodeInvalidRequest && se.Code != service.CodePortNotAllowed) {
				t.Fatalf("Parse(%q) error %v is not a 400 or 403 service error", host, err)
			}
			return
		}
		if got.Port < 1 || got.Port > 65535 || !strings.HasPrefix(got.SandboxID, "sb-") {
			t.Fatalf("Parse(%q) = %+v", host, got)
		}
		if back, err := n.Parse(n.Host(got.SandboxID, got.Port)); err != nil || back != got {
			t.Fatalf("Parse(Host(%+v)) = %+v, %v", got, back, err)
		}
	})
}

func TestPreviewTokens(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	clock := func() time.Time { return now }
	n := names(t, "", clock)
	p, err := n.NewPreview("team-1", id, 8080, 10*time.Minute, "8000")
	if err != nil {
		t.Fatal(err)
	}
	base := "http://8080-" + id + ".localhost:8000/?" + PreviewParam + "="
	tok, ok := strings.CutPrefix(p.URL, base)
	if !ok || !p.ExpiresAt.Equal(now.Add(10*time.Minute)) {
		t.Fatalf("preview %+v", p)
	}
	if team, _, err := n.VerifyPreview(tok, Target{id, 8080}); err != nil || team != "team-1" {
		t.Fatalf("VerifyPreview = %q, %v", team, err)
	}
	other := names(t, "", clock)
	other.secret = []byte("another key, another control plane")
	bad := map[string]func() (string, Target){
		"another port":    func() (string, Target) { return tok, Target{id, 8081} },
		"another sandbox": func() (string, Target) { return tok, Target{"sb-bbbbbbbbbbbbbbbbbbbb", 8080} },
		"tampered":        func() (string, Target) { return "x" + tok, Target{id, 8080} },
		"no signature":    func() (string, Target) { p, _, _ := strings.Cut(tok, "."); return p, Target{id, 8080} },
		"empty":           func() (string, Target) { return "", Target{id, 8080} },
		"another key": func() (string, Target) {
			p, _ := other.NewPreview("team-1", id, 8080, time.Hour, "")
			return p.URL[strings.Index(p.URL, "=")+1:], Target{id, 8080}
		},
	}
	for name, mk := range bad {
		t.Run(name, func(t *testing.T) {
			tok, tgt := mk()
			if _, _, err := n.VerifyPreview(tok, tgt); err == nil {
				t.Fatal("accepted")
			}
		})
	}
	now = now.Add(10 * time.Minute)
	if _, _, err := n.VerifyPreview(tok, Target{id, 8080}); err == nil {
		t.Fatal("an expired token was accepted")
	}
	for _, tc := range []struct {
		port int
		ttl  time.Duration
	}{{49983, time.Hour}, {0, time.Hour}, {70000, time.Hour}, {8080, time.Second}, {8080, 8 * 24 * time.Hour}} {
		if _, err := n.NewPreview("team-1", id, tc.port, tc.ttl, ""); err == nil {
			t.Errorf("NewPreview(port %d, ttl %s) accepted", tc.port, tc.ttl)
		}
	}
}

func TestSDKDomain(t *testing.T) {
	tests := []struct {
		name, publicURL, reqPort, want string
	}{
		{"no public URL: the request's port", "", "8000", "localhost:8000"},
		{"no public URL, default port", "", "", "localhost"},
		{"public URL with a port", "http://cp.example.com:9000", "8000", "localhost:9000"},
		{"public URL without a port", "https://cp.example.com", "8000", "localhost"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			n, err := New("", tc.publicURL, []byte(strings.Repeat("k", 32)), nil)
			if err != nil {
				t.Fatal(err)
			}
			got := n.SDKDomain(tc.reqPort)
			if got != tc.want {
				t.Fatalf("SDKDomain(%q) = %q, want %q", tc.reqPort, got, tc.want)
			}
			// What the SDK's getHost makes of it is a name the proxy serves.
			if host := "8080-sb-abcdefghijklmnopqrst." + got; !n.IsProxyHost(host) {
				t.Fatalf("%s is not a proxy host", host)
			}
		})
	}
}
