package api

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"
	"github.com/getkin/kin-openapi/routers/gorillamux"
)

// The merged OpenAPI document is loaded and validated by kin-openapi, which
// supports OpenAPI 3.1 (type arrays with "null", JSON Schema 2020-12
// keywords through its santhosh-tekuri/jsonschema validator). Every
// response the API tests receive is then checked against it: the status
// must be documented for the operation and the body must match its schema.

// specOnce holds the parsed document and its router, built once per test
// binary: the spec is embedded, so it cannot change while tests run.
var specOnce = sync.OnceValues(func() (*openapiSpec, error) {
	raw, err := buildSpec()
	if err != nil {
		return nil, fmt.Errorf("merge spec: %w", err)
	}
	openapi3filter.RegisterBodyDecoder("text/event-stream", decodeEventStream)
	loader := openapi3.NewLoader()
	doc, err := loader.LoadFromData(raw)
	if err != nil {
		return nil, fmt.Errorf("load spec: %w", err)
	}
	if err := doc.Validate(loader.Context); err != nil {
		return nil, fmt.Errorf("spec is not valid OpenAPI: %w", err)
	}
	// Requests go to a loopback test server: match paths on any host.
	doc.Servers = nil
	router, err := gorillamux.NewRouter(doc)
	if err != nil {
		return nil, fmt.Errorf("route spec: %w", err)
	}
	errSchema := doc.Components.Schemas["Error"]
	if errSchema == nil || errSchema.Value == nil {
		return nil, fmt.Errorf("spec has no components.schemas.Error")
	}
	return &openapiSpec{doc: doc, router: router, errSchema: errSchema.Value}, nil
})

// decodeEventStream checks a server-sent event stream: blocks of "event:"
// and "data:" lines, each data a JSON value; the stream is its text.
func decodeEventStream(body io.Reader, _ http.Header, _ *openapi3.SchemaRef, _ openapi3filter.EncodingFn) (any, error) {
	raw, err := io.ReadAll(body)
	if err != nil {
		return nil, err
	}
	for _, block := range strings.Split(strings.TrimSuffix(string(raw), "\n\n"), "\n\n") {
		lines := strings.Split(block, "\n")
		if len(lines) != 2 || !strings.HasPrefix(lines[0], "event: ") || !strings.HasPrefix(lines[1], "data: ") ||
			!json.Valid([]byte(strings.TrimPrefix(lines[1], "data: "))) {
			return nil, fmt.Errorf("bad server-sent event %q", block)
		}
	}
	return string(raw), nil
}

type openapiSpec struct {
	doc       *openapi3.T
	router    routers.Router
	errSchema *openapi3.Schema
}

func TestSpecIsValidOpenAPI31(t *testing.T) {
	s, err := specOnce()
	if err != nil {
		t.Fatal(err)
	}
	if !s.doc.IsOpenAPI31OrLater() {
		t.Fatalf("openapi %q, want 3.1", s.doc.OpenAPI)
	}
}

// The checker must catch what it is there for; a checker that passes
// everything would make every handler test's validation worthless.
func TestSpecCheckerCatchesMismatches(t *testing.T) {
	tests := []struct {
		name, method, path string
		status             int
		ctype, body        string
		wantErr            string
	}{
		{"documented", "GET", "/health", 200, "application/json", `{"status":"ok","checks":{"db":"ok"}}`, ""},
		{"wrong enum", "GET", "/health", 200, "application/json", `{"status":"fine","checks":{}}`, "status"},
		{"missing field", "GET", "/health", 200, "application/json", `{"status":"ok"}`, "checks"},
		{"undocumented status", "GET", "/health", 418, "application/json", `{"error":{"code":"x","message":"y"}}`, "status is not supported"},
		{"undocumented content type", "GET", "/health", 200, "text/plain", `ok`, "Content-Type"},
		{"listed key without its secret", "GET", "/v1/api-keys", 200, "application/json", `{"api_keys":[` + listedKey + `}]}`, ""},
		{"listed key with its secret", "GET", "/v1/api-keys", 200, "application/json", `{"api_keys":[` + listedKey + `,"key":"wrn_secret"}]}`, "key"},
		{"new key", "POST", "/v1/api-keys", 201, "application/json", listedKey + `,"key":"wrn_secret"}`, ""},
		{"new key without the key", "POST", "/v1/api-keys", 201, "application/json", listedKey + `}`, "key"},
		{"new key with more", "POST", "/v1/api-keys", 201, "application/json", listedKey + `,"key":"wrn_secret","hash":"x"}`, "hash"},
		{"unknown path, error format", "GET", "/nope", 404, "application/json", `{"error":{"code":"not_found","message":"no route"}}`, ""},
		{"unknown path, other format", "GET", "/nope", 404, "application/json", `{"message":"no route"}`, "error"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req := httptest.NewRequest(tt.method, tt.path, nil)
			h := http.Header{"Content-Type": {tt.ctype}}
			err := checkResponse(req, tt.status, h, []byte(tt.body))
			switch {
			case tt.wantErr == "" && err != nil:
				t.Fatalf("unexpected mismatch: %v", err)
			case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
				t.Fatalf("err = %v, want one mentioning %q", err, tt.wantErr)
			}
		})
	}
}

const listedKey = `{"id":"key-1","name":"ci","prefix":"wrn_AbC123","created_at":"2026-01-01T00:00:00Z"`

// checkResponse validates one response against the spec. A path the spec
// does not know (the router's 404s and 405s) must still answer in the one
// error format.
func checkResponse(req *http.Request, status int, header http.Header, body []byte) error {
	s, err := specOnce()
	if err != nil {
		return err
	}
	route, params, err := s.router.FindRoute(req)
	if err != nil {
		if status < 400 {
			return fmt.Errorf("%d answered on a path the spec does not document: %w", status, err)
		}
		var v any
		if err := json.Unmarshal(body, &v); err != nil {
			return fmt.Errorf("undocumented path: body is not JSON: %w", err)
		}
		if err := s.errSchema.VisitJSON(v, openapi3.EnableJSONSchema2020()); err != nil {
			return fmt.Errorf("undocumented path: body is not the error format: %w", err)
		}
		return nil
	}
	in := &openapi3filter.ResponseValidationInput{
		RequestValidationInput: &openapi3filter.RequestValidationInput{Request: req, PathParams: params, Route: route},
		Status:                 status,
		Header:                 header,
		Body:                   io.NopCloser(bytes.NewReader(body)),
		Options:                &openapi3filter.Options{IncludeResponseStatus: true, MultiError: true},
	}
	return openapi3filter.ValidateResponse(context.Background(), in)
}

// specChecked wraps the API so every response it gives is checked against
// the spec once the handler returns; a mismatch fails the test. Hijacked
// connections (WebSocket streams) are passed through unchecked after the
// upgrade: their messages are not HTTP responses.
func specChecked(tb testing.TB, h http.Handler) http.Handler {
	if _, err := specOnce(); err != nil {
		tb.Fatal(err)
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rec := &recordingWriter{ResponseWriter: w, status: http.StatusOK}
		// The handler may read and replace the body; the check needs only
		// the method, URL and headers.
		req := r.Clone(r.Context())
		h.ServeHTTP(rec, r)
		if rec.hijacked {
			return
		}
		if err := checkResponse(req, rec.status, w.Header(), rec.body.Bytes()); err != nil {
			tb.Errorf("%s %s answered %d, which the OpenAPI spec does not allow: %v\nbody: %.500s", r.Method, r.URL.RequestURI(), rec.status, err, rec.body.Bytes())
		}
	})
}

// recordingWriter passes a response through and keeps a copy of its status
// and body.
type recordingWriter struct {
	http.ResponseWriter
	status      int
	wroteHeader bool
	hijacked    bool
	body        bytes.Buffer
}

func (w *recordingWriter) WriteHeader(code int) {
	if !w.wroteHeader {
		w.status, w.wroteHeader = code, true
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *recordingWriter) Write(p []byte) (int, error) {
	w.wroteHeader = true
	w.body.Write(p)
	return w.ResponseWriter.Write(p)
}

func (w *recordingWriter) Flush() {
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

func (w *recordingWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	hj, ok := w.ResponseWriter.(http.Hijacker)
	if !ok {
		return nil, nil, fmt.Errorf("hijack: %T is not a Hijacker", w.ResponseWriter)
	}
	w.hijacked = true
	return hj.Hijack()
}

// Unwrap lets http.ResponseController reach the real writer.
func (w *recordingWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }
