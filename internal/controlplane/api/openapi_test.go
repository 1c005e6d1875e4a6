package api

import (
	"io"
	"log/slog"
	"net/http"
	"regexp"
	"strings"
	"testing"

	"github.com/go-chi/chi/v5"
	"gopkg.in/yaml.v3"
)

type specDoc struct {
	OpenAPI string                    `yaml:"openapi"`
	Paths   map[string]map[string]any `yaml:"paths"`
}

func loadSpec(t *testing.T) specDoc {
	t.Helper()
	raw, err := buildSpec()
	if err != nil {
		t.Fatalf("merge spec: %v", err)
	}
	var doc specDoc
	if err := yaml.Unmarshal(raw, &doc); err != nil {
		t.Fatalf("openapi.yaml does not parse: %v", err)
	}
	if !strings.HasPrefix(doc.OpenAPI, "3.1") {
		t.Fatalf("openapi version = %q, want 3.1.x", doc.OpenAPI)
	}
	return doc
}

var chiParam = regexp.MustCompile(`\{([^}:]+)(:[^}]*)?\}`)

// specPath turns a chi pattern into its OpenAPI form: {id:regex} -> {id},
// and a trailing wildcard into the documented {asset} parameter.
func specPath(route string) string {
	p := chiParam.ReplaceAllString(route, "{$1}")
	if strings.HasSuffix(p, "/*") {
		p = strings.TrimSuffix(p, "*") + "{asset}"
	}
	return strings.TrimSuffix(p, "/")
}

// Every registered route must be documented, and every documented operation
// must exist: the spec is the contract SDKs are generated from.
func TestEveryRouteIsInTheSpec(t *testing.T) {
	doc := loadSpec(t)
	s := mustNew(t, Deps{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	registered := map[string]bool{}
	err := chi.Walk(s.Router(), func(method, route string, _ http.Handler, _ ...func(http.Handler) http.Handler) error {
		p := specPath(route)
		if p == "" {
			p = "/"
		}
		key := strings.ToLower(method) + " " + p
		registered[key] = true
		ops, ok := doc.Paths[p]
		if !ok {
			t.Errorf("route %s %s (spec path %s) is missing from openapi.yaml", method, route, p)
			return nil
		}
		if _, ok := ops[strings.ToLower(method)]; !ok {
			t.Errorf("route %s %s: method missing under %s in openapi.yaml", method, route, p)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("walk routes: %v", err)
	}
	for p, ops := range doc.Paths {
		for method := range ops {
			switch method {
			case "parameters", "summary", "description":
				continue
			}
			if !registered[method+" "+p] {
				t.Errorf("openapi.yaml documents %s %s but no such route is registered", strings.ToUpper(method), p)
			}
		}
	}
}
