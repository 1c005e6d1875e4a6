package dashboard

import (
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"testing/fstest"

	"github.com/wrenn-dev/wrenn/internal/testenv"
)

const bootScript = "\n\t\t\t\t__sveltekit_x = {base: \"\"};\n\t\t\t"

func testFS() fstest.MapFS {
	return fstest.MapFS{
		"index.html":                      {Data: []byte("<!doctype html><html><head></head><body><script>" + bootScript + "</script></body></html>")},
		"_app/immutable/entry/app.abc.js": {Data: []byte("console.log(1)")},
		"_app/version.json":               {Data: []byte(`{"version":"1"}`)},
		"favicon.svg":                     {Data: []byte("<svg/>")},
	}
}

func TestServe(t *testing.T) {
	h, err := NewFS(testFS())
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256([]byte(bootScript))
	scriptHash := "'sha256-" + base64.StdEncoding.EncodeToString(sum[:]) + "'"
	const html = "text/html,application/xhtml+xml"
	tests := []struct {
		name, method, path, accept string
		served                     bool
		body, cache                string
	}{
		{"root", "GET", "/", "", true, "<!doctype html>", "no-cache"},
		{"index by name", "GET", "/index.html", html, true, "<!doctype html>", "no-cache"},
		{"page navigation falls back", "GET", "/dashboard/capsules/list", html, true, "<!doctype html>", "no-cache"},
		{"head navigation", "HEAD", "/dashboard/keys", html, true, "", "no-cache"},
		{"hashed asset cached forever", "GET", "/_app/immutable/entry/app.abc.js", "*/*", true, "console.log(1)", "public, max-age=31536000, immutable"},
		{"unhashed asset revalidated", "GET", "/favicon.svg", "*/*", true, "<svg/>", "no-cache"},
		{"traversal is cleaned", "GET", "/../favicon.svg", "*/*", true, "<svg/>", "no-cache"},
		{"missing asset is not the page", "GET", "/_app/immutable/gone.js", "*/*", false, "", ""},
		{"program asking a page path", "GET", "/dashboard/keys", "application/json", false, "", ""},
		{"post", "POST", "/dashboard/keys", html, false, "", ""},
		{"directory", "GET", "/_app/immutable", "*/*", false, "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req := httptest.NewRequest(tt.method, "http://x"+tt.path, nil)
			req.URL.Path = tt.path
			if tt.accept != "" {
				req.Header.Set("Accept", tt.accept)
			}
			rec := httptest.NewRecorder()
			served := h.Serve(rec, req)
			if served != tt.served {
				t.Fatalf("served = %v, want %v", served, tt.served)
			}
			if !served {
				if rec.Body.Len() != 0 || len(rec.Header()) != 0 {
					t.Fatalf("not served but wrote %d %v %q", rec.Code, rec.Header(), rec.Body)
				}
				return
			}
			if rec.Code != http.StatusOK || !strings.HasPrefix(rec.Body.String(), tt.body) {
				t.Fatalf("= %d %q", rec.Code, rec.Body)
			}
			if got := rec.Header().Get("Cache-Control"); got != tt.cache {
				t.Fatalf("Cache-Control %q, want %q", got, tt.cache)
			}
			csp := rec.Header().Get("Content-Security-Policy")
			for _, want := range []string{"default-src 'self'", "script-src 'self' " + scriptHash, "frame-ancestors 'none'", "connect-src 'self'"} {
				if !strings.Contains(csp, want) {
					t.Fatalf("CSP %q lacks %q", csp, want)
				}
			}
			if strings.Contains(csp, "unsafe-eval") || strings.Contains(strings.SplitN(strings.SplitN(csp, "script-src", 2)[1], ";", 2)[0], "unsafe-inline") {
				t.Fatalf("CSP allows unsafe scripts: %q", csp)
			}
			if rec.Header().Get("X-Content-Type-Options") != "nosniff" {
				t.Fatal("nosniff missing")
			}
		})
	}
}

func TestNotBuilt(t *testing.T) {
	if _, err := NewFS(fstest.MapFS{".gitkeep": {}}); !errors.Is(err, ErrNotBuilt) {
		t.Fatalf("err = %v, want ErrNotBuilt", err)
	}
	if !strings.Contains(ErrNotBuilt.Error(), "make web") {
		t.Fatalf("the error must say how to build the assets: %v", ErrNotBuilt)
	}
}

// TestEmbeddedBuild checks the build `make web` embedded: small enough,
// and its bootstrap script allowed by the CSP's hash (SvelteKit's output
// has the shape inlineScript expects).
func TestEmbeddedBuild(t *testing.T) {
	h, err := New()
	testenv.Require(t, err == nil, "the dashboard is not built into internal/controlplane/dashboard/dist (run `make web`): %v", err)
	if n := strings.Count(h.csp, "'sha256-"); n != 1 {
		t.Fatalf("CSP allows %d inline scripts, want SvelteKit's one bootstrap script: %s", n, h.csp)
	}
	var gzipped int64
	err = fs.WalkDir(h.files, ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := fs.ReadFile(h.files, p)
		if err != nil {
			return err
		}
		var buf bytes.Buffer
		zw, _ := gzip.NewWriterLevel(&buf, gzip.BestCompression)
		_, _ = zw.Write(b)
		_ = zw.Close()
		gzipped += int64(buf.Len())
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("dashboard assets: %d bytes gzipped", gzipped)
	if gzipped > 1500*1000 {
		t.Fatalf("dashboard assets are %d bytes gzipped, over the 1.5 MB budget", gzipped)
	}
}
