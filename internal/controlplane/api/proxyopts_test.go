package api

import (
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"
)

// The sandbox proxy's API: public_ports and auto_resume at create and by
// PATCH, and preview URLs; bad input gets a 4xx naming the field.
func TestProxyOptionsAndPreviewURLs(t *testing.T) {
	e := newEnv(t)
	owner := e.signup("owner@example.com")
	c := owner.cred()
	other := e.signup("other@example.com").cred()
	var sb struct {
		ID          string `json:"id"`
		PublicPorts []int  `json:"public_ports"`
		AutoResume  bool   `json:"auto_resume"`
	}
	e.want(http.MethodPost, "/v1/sandboxes", map[string]any{"public_ports": []int{8080, 3000, 8080}, "auto_resume": true}, c, http.StatusCreated, &sb)
	if !slices.Equal(sb.PublicPorts, []int{3000, 8080}) || !sb.AutoResume {
		t.Fatalf("created %+v, want public ports [3000 8080] and auto_resume", sb)
	}
	plain := e.createSandbox(c, nil)
	e.want(http.MethodGet, sbPath(plain.ID), nil, c, http.StatusOK, &sb)
	if len(sb.PublicPorts) != 0 || sb.AutoResume {
		t.Fatalf("default options %+v, want none", sb)
	}
	e.want(http.MethodPatch, sbPath(plain.ID), map[string]any{"public_ports": []int{5000}}, c, http.StatusOK, &sb)
	if !slices.Equal(sb.PublicPorts, []int{5000}) || sb.AutoResume {
		t.Fatalf("after PATCH %+v", sb)
	}
	e.want(http.MethodPatch, sbPath(plain.ID), map[string]any{"auto_resume": true}, c, http.StatusOK, &sb)
	if !slices.Equal(sb.PublicPorts, []int{5000}) || !sb.AutoResume {
		t.Fatalf("PATCH of auto_resume alone changed the ports: %+v", sb)
	}

	bad := []struct {
		name, method, path string
		body               any
		cred               cred
		status             int
		code, field        string
	}{
		{"create with envd's port public", "POST", "/v1/sandboxes", `{"public_ports":[49983]}`, c, 400, "invalid_request", "public_ports"},
		{"create with port 0 public", "POST", "/v1/sandboxes", `{"public_ports":[0]}`, c, 400, "invalid_request", "public_ports"},
		{"create with 17 public ports", "POST", "/v1/sandboxes", `{"public_ports":[1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17]}`, c, 400, "invalid_request", "public_ports"},
		{"create with a port string", "POST", "/v1/sandboxes", `{"public_ports":["80"]}`, c, 400, "invalid_request", "public_ports"},
		{"create with auto_resume a string", "POST", "/v1/sandboxes", `{"auto_resume":"yes"}`, c, 400, "invalid_request", "auto_resume"},
		{"patch with port 70000", "PATCH", sbPath(plain.ID), `{"public_ports":[70000]}`, c, 400, "invalid_request", "public_ports"},
		{"patch an unknown field", "PATCH", sbPath(plain.ID), `{"ports":[1]}`, c, 400, "invalid_request", "ports"},
		{"patch without a body", "PATCH", sbPath(plain.ID), nil, c, 400, "invalid_request", ""},
		{"patch another team's sandbox", "PATCH", sbPath(plain.ID), `{"auto_resume":true}`, other, 404, "sandbox_not_found", ""},
		{"preview of envd's port", "POST", sbPath(plain.ID, "/preview-urls"), `{"port":49983}`, c, 403, "port_not_allowed", ""},
		{"preview of port 0", "POST", sbPath(plain.ID, "/preview-urls"), `{"port":0}`, c, 403, "port_not_allowed", ""},
		{"preview without a port", "POST", sbPath(plain.ID, "/preview-urls"), `{}`, c, 403, "port_not_allowed", ""},
		{"preview for 10 s", "POST", sbPath(plain.ID, "/preview-urls"), `{"port":8080,"ttl_sec":10}`, c, 400, "invalid_request", "ttl_sec"},
		{"preview for a negative time", "POST", sbPath(plain.ID, "/preview-urls"), `{"port":8080,"ttl_sec":-1}`, c, 400, "invalid_request", "ttl_sec"},
		{"preview for 8 days", "POST", sbPath(plain.ID, "/preview-urls"), `{"port":8080,"ttl_sec":691200}`, c, 400, "invalid_request", "ttl_sec"},
		{"preview with an unknown field", "POST", sbPath(plain.ID, "/preview-urls"), `{"port":8080,"ttl":60}`, c, 400, "invalid_request", "ttl"},
		{"preview of another team's sandbox", "POST", sbPath(plain.ID, "/preview-urls"), `{"port":8080}`, other, 404, "sandbox_not_found", ""},
		{"preview of an unknown sandbox", "POST", sbPath("sb-aaaaaaaaaaaaaaaaaaaa", "/preview-urls"), `{"port":8080}`, c, 404, "sandbox_not_found", ""},
	}
	for _, tc := range bad {
		t.Run(tc.name, func(t *testing.T) {
			e.wantErr(tc.method, tc.path, tc.body, tc.cred, tc.status, tc.code, tc.field)
		})
	}

	var p struct {
		URL       string    `json:"url"`
		Port      int       `json:"port"`
		ExpiresAt time.Time `json:"expires_at"`
	}
	e.want(http.MethodPost, sbPath(plain.ID, "/preview-urls"), map[string]any{"port": 8080}, c, http.StatusCreated, &p)
	if !strings.HasPrefix(p.URL, "http://8080-"+plain.ID+".localhost:") || !strings.Contains(p.URL, "/?wrenn_preview=") || p.Port != 8080 ||
		time.Until(p.ExpiresAt) < 59*time.Minute || time.Until(p.ExpiresAt) > time.Hour {
		t.Fatalf("preview URL %+v, want one hour on 8080-%s.localhost", p, plain.ID)
	}
	e.want(http.MethodDelete, sbPath(plain.ID), nil, c, http.StatusNoContent, nil)
	e.wantErr(http.MethodPost, sbPath(plain.ID, "/preview-urls"), `{"port":8080}`, c, 404, "sandbox_not_found", "")
	e.wantErr(http.MethodPatch, sbPath(plain.ID), `{"auto_resume":false}`, c, 409, "invalid_state", "")
}
