// Package dashboard serves the web dashboard: the SvelteKit static build
// of web/ that `make web` copies into dist/ and go:embed puts into the
// binary. Files are served as they are; any other page the browser
// navigates to gets index.html (the app routes in the browser).
package dashboard

import (
	"bytes"
	"crypto/sha256"
	"embed"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"path"
	"regexp"
	"strings"
	"time"
)

//go:embed all:dist
var embedded embed.FS

// ErrNotBuilt: the binary was built without the dashboard's assets.
var ErrNotBuilt = errors.New("the dashboard's assets were not built into this binary; run `make web` (or `make build`), then rebuild")

// immutablePrefix holds content-hashed files: a new build gets new names,
// so they may be cached forever.
const immutablePrefix = "_app/immutable/"

// Handler serves the dashboard.
type Handler struct {
	files fs.FS
	index []byte
	csp   string
}

// New serves the embedded build; ErrNotBuilt when there is none.
func New() (*Handler, error) {
	sub, err := fs.Sub(embedded, "dist")
	if err != nil {
		return nil, fmt.Errorf("dashboard assets: %w", err)
	}
	return NewFS(sub)
}

// NewFS serves the build in files (index.html at its root).
func NewFS(files fs.FS) (*Handler, error) {
	index, err := fs.ReadFile(files, "index.html")
	if errors.Is(err, fs.ErrNotExist) {
		return nil, ErrNotBuilt
	}
	if err != nil {
		return nil, fmt.Errorf("read dashboard index.html: %w", err)
	}
	return &Handler{files: files, index: index, csp: contentSecurityPolicy(index)}, nil
}

// inlineScript matches the bootstrap scripts SvelteKit writes into
// index.html (the build is ours, so its shape is known).
var inlineScript = regexp.MustCompile(`(?s)<script>(.*?)</script>`)

// contentSecurityPolicy allows only this origin, plus index.html's own
// inline scripts by hash. Styles may be inline: Svelte and xterm.js set
// them at run time.
func contentSecurityPolicy(index []byte) string {
	scripts := []string{"'self'"}
	for _, m := range inlineScript.FindAllSubmatch(index, -1) {
		sum := sha256.Sum256(m[1])
		scripts = append(scripts, "'sha256-"+base64.StdEncoding.EncodeToString(sum[:])+"'")
	}
	return strings.Join([]string{
		"default-src 'self'",
		"script-src " + strings.Join(scripts, " "),
		"style-src 'self' 'unsafe-inline'",
		"img-src 'self' data:",
		"font-src 'self'",
		"connect-src 'self'",
		"object-src 'none'",
		"base-uri 'none'",
		"form-action 'self'",
		"frame-ancestors 'none'",
	}, "; ")
}

// IsNavigation reports whether r is a browser loading a page (as opposed
// to a program or a script asking for data).
func IsNavigation(r *http.Request) bool {
	return (r.Method == http.MethodGet || r.Method == http.MethodHead) &&
		strings.Contains(r.Header.Get("Accept"), "text/html")
}

// Serve answers r with a file of the build or, for a navigation,
// index.html. It reports false, writing nothing, when it has neither.
func (h *Handler) Serve(w http.ResponseWriter, r *http.Request) bool {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		return false
	}
	name := strings.TrimPrefix(path.Clean("/"+r.URL.Path), "/")
	if name != "" && name != "index.html" && h.serveFile(w, r, name) {
		return true
	}
	if name != "" && !IsNavigation(r) {
		return false
	}
	h.headers(w)
	// index.html names the hashed files of this build: always revalidated.
	w.Header().Set("Cache-Control", "no-cache")
	http.ServeContent(w, r, "index.html", time.Time{}, bytes.NewReader(h.index))
	return true
}

// serveFile serves the build's file name, if there is one.
func (h *Handler) serveFile(w http.ResponseWriter, r *http.Request, name string) bool {
	f, err := h.files.Open(name)
	if err != nil {
		return false
	}
	defer f.Close()
	st, err := f.Stat()
	rs, seekable := f.(io.ReadSeeker)
	if err != nil || st.IsDir() || !seekable {
		return false
	}
	h.headers(w)
	if strings.HasPrefix(name, immutablePrefix) {
		w.Header().Set("Cache-Control", "public, max-age=31536000, immutable")
	} else {
		w.Header().Set("Cache-Control", "no-cache")
	}
	http.ServeContent(w, r, name, st.ModTime(), rs)
	return true
}

func (h *Handler) headers(w http.ResponseWriter) {
	w.Header().Set("Content-Security-Policy", h.csp)
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.Header().Set("Referrer-Policy", "same-origin")
	w.Header().Set("X-Frame-Options", "DENY")
}
