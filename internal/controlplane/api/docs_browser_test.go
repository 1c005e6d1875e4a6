package api

import (
	"context"
	"io"
	"io/fs"
	"iter"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os/exec"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/fetch"
	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/chromedp"

	"github.com/wrenn-dev/wrenn/internal/testenv"
)

// docsHost is the name the browser opens the server under: not localhost,
// as in a real deployment (Swagger UI treats localhost specially). Only
// this name resolves, to the test server on loopback.
const docsHost = "docs.wrenn.test"

// pageRequests records what a page asked for: every request of the page
// is paused (CDP Fetch); those for docsHost go on, all others are failed.
type pageRequests struct {
	mu      sync.Mutex
	own     []string // paths requested from docsHost
	foreign []string // every other URL the page tried
}

// serve decides the paused requests until the browser goes away.
func (p *pageRequests) serve(ctx context.Context, paused iter.Seq2[fetch.EventRequestPaused, error]) {
	for e, err := range paused {
		if err != nil {
			return
		}
		u, perr := url.Parse(e.Request.URL)
		p.mu.Lock()
		own := perr == nil && u.Hostname() == docsHost
		if own {
			p.own = append(p.own, u.Path)
		} else {
			p.foreign = append(p.foreign, e.Request.URL)
		}
		p.mu.Unlock()
		if own {
			_, _ = chromedp.Call(ctx, fetch.ContinueRequest, fetch.ContinueRequestParams{RequestID: e.RequestID})
		} else {
			_, _ = chromedp.Call(ctx, fetch.FailRequest, fetch.FailRequestParams{RequestID: e.RequestID, ErrorReason: network.ErrorReasonBlockedByClient})
		}
	}
}

// /docs, opened in headless Chromium from a non-localhost name, contacts no
// host but its own: Swagger UI's validator (which would load a badge from
// validator.swagger.io with the spec's URL in it) is off. A control page
// with an outside image shows the interception sees such requests.
func TestDocsPageContactsOnlyItsOwnHost(t *testing.T) {
	_, err := fs.Stat(swaggerFS(), "swagger-ui-bundle.js")
	testenv.Require(t, err == nil, "Swagger UI assets not built into internal/controlplane/api/swaggerui/dist (run `make web`)")
	chromium, err := exec.LookPath("chromium")
	testenv.Require(t, err == nil, "headless Chromium not installed (Debian package chromium; scripts/setup.sh installs it)")

	mux := http.NewServeMux()
	mux.Handle("/", mustNew(t, Deps{Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), Version: "test"}))
	mux.HandleFunc("GET /test-control", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/html")
		_, _ = io.WriteString(w, `<!doctype html><p id="ready">control</p><img src="https://elsewhere.example/badge.png">`)
	})
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	_, port, _ := net.SplitHostPort(srv.Listener.Addr().String())
	base := "http://" + docsHost + ":" + port

	cases := []struct {
		name, path, ready string
		wantOwn           []string
		wantForeign       bool
		// check, when set, is a script that must evaluate to true on the page.
		check string
	}{
		// The validator badge is drawn by layouts that show it; with the
		// validator off no layout can, whatever the page is changed to.
		{"docs", "/docs", ".opblock", []string{"/docs", "/docs/swagger-ui-bundle.js", "/docs/swagger-ui.css", "/openapi.yaml"}, false,
			"window.ui.getConfigs().validatorUrl === null"},
		{"control page with an outside image", "/test-control", "#ready", []string{"/test-control"}, true, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			opts := append(chromedp.DefaultExecAllocatorOptions[:],
				chromedp.ExecPath(chromium), chromedp.NoSandbox, chromedp.UserDataDir(t.TempDir()),
				// Nothing but the test server resolves, whatever the page or
				// the browser itself asks for.
				chromedp.Flag("host-resolver-rules", "MAP "+docsHost+" 127.0.0.1, MAP * ~NOTFOUND"))
			actx, cancelAlloc := chromedp.NewExecAllocator(ctx, opts...)
			defer cancelAlloc()
			bctx, cancelBrowser := chromedp.NewContext(actx)
			defer cancelBrowser()
			var reqs pageRequests
			paused := chromedp.Events(bctx, fetch.RequestPaused)
			if _, err := chromedp.Call(bctx, fetch.Enable, fetch.EnableParams{Patterns: []*fetch.RequestPattern{{URLPattern: "*"}}}); err != nil {
				t.Fatalf("intercept requests: %v", err)
			}
			go reqs.serve(bctx, paused)
			err := chromedp.Do(bctx,
				chromedp.Navigate(base+tc.path),
				chromedp.WaitVisible(tc.ready),
				chromedp.Sleep(2*time.Second), // late requests (images, badges) have time to show
			)
			if err != nil {
				t.Fatalf("load %s in chromium: %v", tc.path, err)
			}
			if tc.check != "" {
				ok, err := chromedp.Run(bctx, chromedp.Evaluate[bool](tc.check))
				if err != nil || !ok {
					t.Errorf("%s: %v, %v", tc.check, ok, err)
				}
			}
			reqs.mu.Lock()
			defer reqs.mu.Unlock()
			if got := len(reqs.foreign) > 0; got != tc.wantForeign {
				t.Errorf("requests to other hosts: %q (want some: %v)", reqs.foreign, tc.wantForeign)
			}
			for _, want := range tc.wantOwn {
				if !slices.Contains(reqs.own, want) {
					t.Errorf("the page did not request %s (requests: %q)", want, reqs.own)
				}
			}
		})
	}
}
