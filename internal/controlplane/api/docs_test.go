package api

import (
	"io"
	"io/fs"
	"net/http"
	"strings"
	"testing"

	"github.com/wrenn-dev/wrenn/internal/testenv"
)

// /docs must render from embedded assets only: the page may reference
// nothing outside this server.
func TestDocsServedFromEmbeddedAssets(t *testing.T) {
	_, err := fs.Stat(swaggerFS(), "swagger-ui-bundle.js")
	testenv.Require(t, err == nil, "Swagger UI assets not built into internal/controlplane/api/swaggerui/dist (run `make web`)")
	srv := newTestServer(t, nil)
	defer srv.Close()
	resp, err := http.Get(srv.URL + "/docs")
	if err != nil {
		t.Fatal(err)
	}
	page, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(page), "SwaggerUIBundle") {
		t.Fatalf("GET /docs = %d", resp.StatusCode)
	}
	if strings.Contains(string(page), "http://") || strings.Contains(string(page), "https://") {
		t.Fatalf("/docs references an outside URL:\n%s", page)
	}
	for _, asset := range []string{"/docs/swagger-ui-bundle.js", "/docs/swagger-ui.css"} {
		resp, err := http.Get(srv.URL + asset)
		if err != nil {
			t.Fatal(err)
		}
		n, _ := io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || n < 1000 {
			t.Fatalf("GET %s = %d, %d bytes", asset, resp.StatusCode, n)
		}
	}
}
