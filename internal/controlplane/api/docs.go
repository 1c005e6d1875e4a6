package api

import (
	"embed"
	"io/fs"
	"net/http"
	"path"
	"strings"

	"github.com/wrenn-dev/wrenn/internal/controlplane/service"
)

// swaggerAssets is filled by `make web` from the pinned npm package
// swagger-ui-dist, so /docs works with no network.
//
//go:embed all:swaggerui/dist
var swaggerAssets embed.FS

const docsIndex = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Wrenn API</title>
<link rel="stylesheet" href="/docs/swagger-ui.css">
</head>
<body>
<div id="swagger-ui"></div>
<script src="/docs/swagger-ui-bundle.js"></script>
<script>
// validatorUrl: null: the default sends every visitor's browser, with the
// spec's URL, to validator.swagger.io. /docs contacts no host but its own.
window.ui = SwaggerUIBundle({url: "/openapi.yaml", dom_id: "#swagger-ui", deepLinking: true, validatorUrl: null});
</script>
</body>
</html>
`

func swaggerFS() fs.FS {
	sub, err := fs.Sub(swaggerAssets, "swaggerui/dist")
	if err != nil {
		panic(err) // the path is a compile-time constant
	}
	return sub
}

func serveDocsIndex(w http.ResponseWriter, _ *http.Request) {
	if _, err := fs.Stat(swaggerFS(), "swagger-ui-bundle.js"); err != nil {
		WriteError(w, service.CodeDocsUnavailable,
			"Swagger UI assets were not built into this binary; build it with `make build`")
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	_, _ = w.Write([]byte(docsIndex))
}

func serveDocsAsset(w http.ResponseWriter, r *http.Request) {
	name := strings.TrimPrefix(path.Clean(r.URL.Path), "/docs/")
	if name == "" || name == "." || strings.HasPrefix(name, ".") {
		WriteError(w, service.CodeNotFound, "no such documentation asset")
		return
	}
	if _, err := fs.Stat(swaggerFS(), name); err != nil {
		WriteError(w, service.CodeNotFound, "no such documentation asset")
		return
	}
	http.ServeFileFS(w, r, swaggerFS(), name)
}
