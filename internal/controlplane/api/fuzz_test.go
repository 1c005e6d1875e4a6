package api

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/wrenn-dev/wrenn/internal/controlplane/auth"
	"github.com/wrenn-dev/wrenn/internal/controlplane/service"
)

// fuzzService validates input without a database: every fuzzed body either
// decodes and validates, or fails with a 4xx service error. Never a panic,
// never an unclassified error.
func fuzzService(f *testing.F) *service.Service {
	tk, err := auth.NewTokens(testSecret, time.Hour, nil)
	if err != nil {
		f.Fatal(err)
	}
	svc, err := service.New(service.Deps{Tokens: tk, Passwords: auth.Passwords{Cost: 4}})
	if err != nil {
		f.Fatal(err)
	}
	return svc
}

func decodeBody(t *testing.T, body string, v any) error {
	req := httptest.NewRequest("POST", "/", strings.NewReader(body))
	req.Body = http.MaxBytesReader(httptest.NewRecorder(), req.Body, 64<<10)
	err := decodeJSON(req, v, true)
	if err == nil {
		return nil
	}
	se, ok := service.AsError(err)
	if !ok {
		t.Fatalf("decode %q: unclassified error %v", body, err)
	}
	if st := StatusOf(se.Kind); st != 400 && st != 413 {
		t.Fatalf("decode %q: status %d for bad input", body, st)
	}
	if se.Message == "" {
		t.Fatalf("decode %q: empty message", body)
	}
	return err
}

func FuzzCreateSandboxBody(f *testing.F) {
	for _, s := range []string{``, `{}`, `{"template":"minimal","vcpus":2,"memory_mb":512,"timeout_sec":60,"metadata":{"a":"b"}}`,
		`{"vcpus":"2"}`, `{"vcpus":1e99}`, `{"metadata":{"a":1}}`, `{"env_vars":{"":"x"}}`, `[`, `null`, `{"internet_access":true}`,
		`{"template":"` + strings.Repeat("x", 200) + `"}`, `{"a":1}{}`, `{"timeout_sec":-1}`} {
		f.Add(s)
	}
	svc := fuzzService(f)
	f.Fuzz(func(t *testing.T, body string) {
		var in service.CreateSandboxInput
		if decodeBody(t, body, &in) != nil {
			return
		}
		err := svc.CheckCreate(in)
		if err == nil {
			lim := svc.Limits()
			if in.VCPUs != nil && (*in.VCPUs < 1 || *in.VCPUs > lim.MaxVCPUs) {
				t.Fatalf("vcpus %d accepted", *in.VCPUs)
			}
			if in.TimeoutSec != nil && *in.TimeoutSec < 0 {
				t.Fatalf("negative timeout accepted")
			}
			return
		}
		se, ok := service.AsError(err)
		if !ok || se.Kind != service.KindInvalid || se.Field == "" {
			t.Fatalf("create %q: want an invalid error naming a field, got %v", body, err)
		}
	})
}

func FuzzExecBody(f *testing.F) {
	for _, s := range []string{`{"cmd":"echo","args":["a"]}`, `{"cmd":""}`, `{"cmd":"x","env":{"A=B":"c"}}`, `{"cmd":"x","timeout_sec":-3}`,
		`{"cmd":"x","background":true,"tag":"t"}`, `{"cmd":1}`, `{"cmd":"a\u0000b"}`, `{"cmd":"x","args":null}`, `{`, `{"cmd":"x","stdin":"data"}`} {
		f.Add(s)
	}
	svc := fuzzService(f)
	f.Fuzz(func(t *testing.T, body string) {
		var in service.ExecInput
		if decodeBody(t, body, &in) != nil {
			return
		}
		err := svc.CheckExec(in)
		if err == nil {
			if strings.TrimSpace(in.Cmd) == "" {
				t.Fatalf("empty cmd accepted: %q", body)
			}
			return
		}
		se, ok := service.AsError(err)
		if !ok || se.Kind != service.KindInvalid || se.Field == "" {
			t.Fatalf("exec %q: want an invalid error naming a field, got %v", body, err)
		}
	})
}

func FuzzListQuery(f *testing.F) {
	for _, s := range []string{"status=running", "limit=5&cursor=abc", "metadata.app=web", "limit=-1", "status=,,,", "cursor=%ff"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, q string) {
		req := httptest.NewRequest("GET", "/v1/sandboxes", nil)
		req.URL.RawQuery = q
		_, err := parseListQuery(req)
		if err != nil {
			if se, ok := service.AsError(err); !ok || se.Kind != service.KindInvalid {
				t.Fatalf("query %q: %v", q, err)
			}
		}
	})
}

// Without a service the core routes are registered (the spec test walks
// them) but answer 503 in the API's format.
func TestCoreRoutesWithoutServiceAnswer503(t *testing.T) {
	srv := newTestServer(t, nil)
	for _, p := range []string{"/v1/me", "/v1/sandboxes", "/v1/capsules/sb-x", "/v1/snapshots"} {
		resp, err := http.Get(srv.URL + p)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusServiceUnavailable {
			t.Fatalf("GET %s = %d", p, resp.StatusCode)
		}
	}
}
