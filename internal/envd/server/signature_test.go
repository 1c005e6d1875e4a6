package server

import (
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/wrenn-dev/wrenn/internal/envd/httpapi"
)

// TestSignedFileURLs: with an access token set, /files accepts a URL
// signed with it (as E2B's SDKs make them for secure sandboxes) instead
// of the token header, and refuses forged, mismatched or expired ones.
func TestSignedFileURLs(t *testing.T) {
	e := newEnv(t, Config{})
	dir := t.TempDir()
	f := filepath.Join(dir, "f.txt")
	if err := os.WriteFile(f, []byte("content"), 0o644); err != nil {
		t.Fatal(err)
	}
	const token = "tok-secret"
	res := e.do("POST", "/init", strings.NewReader(`{"accessToken":"`+token+`"}`), nil)
	if readAll(t, res); res.StatusCode != http.StatusNoContent {
		t.Fatalf("init: %d", res.StatusCode)
	}
	now := time.Now().Unix()
	me := "root"
	sign := func(path, op, user, tok string, exp int64) string {
		return httpapi.SignedFileURL("", path, op, user, tok, exp)
	}
	tests := []struct {
		name   string
		method string
		url    string
		header map[string]string
		want   int
	}{
		{"read, no expiration", "GET", sign(f, "read", "", token, 0), nil, 200},
		{"read with a user", "GET", sign(f, "read", me, token, 0), nil, 200},
		{"read, expires later", "GET", sign(f, "read", "", token, now+60), nil, 200},
		{"write", "POST", sign(filepath.Join(dir, "new.txt"), "write", "", token, now+60), nil, 200},
		{"no signature, no token", "GET", "/files?path=" + f, nil, 401},
		{"signed with another token", "GET", sign(f, "read", "", "other", 0), nil, 401},
		{"a read signature used to write", "POST", sign(f, "read", "", token, 0), nil, 401},
		{"a write signature used to read", "GET", sign(f, "write", "", token, 0), nil, 401},
		{"signed for another path", "GET", strings.Replace(sign(f, "read", "", token, 0), "f.txt", "g.txt", 1), nil, 401},
		{"signed for another user", "GET", strings.Replace(sign(f, "read", me, token, 0), "username=root", "username=nobody", 1), nil, 401},
		{"expired", "GET", sign(f, "read", "", token, now-5), nil, 401},
		{"expiration moved later", "GET", strings.Replace(sign(f, "read", "", token, now-5), "signature_expiration=", "signature_expiration=9", 1), nil, 401},
		{"expiration removed", "GET", strings.Replace(sign(f, "read", "", token, now+60), "signature_expiration=", "x=", 1), nil, 401},
		{"garbage expiration", "GET", sign(f, "read", "", token, 0) + "&signature_expiration=soon", nil, 401},
		{"forged", "GET", "/files?path=" + f + "&signature=v1_AAAA", nil, 401},
		{"a wrong token header with a good signature", "GET", sign(f, "read", "", token, 0), map[string]string{"X-Access-Token": "bad"}, 401},
		{"the token header still works", "GET", "/files?path=" + f, map[string]string{"X-Access-Token": token}, 200},
		{"a signature opens /files only", "GET", "/envs?signature=" + httpapi.FileSignature("", "read", "", token, 0), nil, 401},
	}
	for _, tc := range tests {
		var body *strings.Reader
		if tc.method == "POST" {
			body = strings.NewReader("uploaded")
		} else {
			body = strings.NewReader("")
		}
		res := e.do(tc.method, tc.url, body, tc.header)
		out := readAll(t, res)
		if res.StatusCode != tc.want {
			t.Errorf("%s: %d %s, want %d", tc.name, res.StatusCode, out, tc.want)
		}
		if tc.want == 200 && tc.method == "GET" && out != "content" {
			t.Errorf("%s: body %q", tc.name, out)
		}
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "new.txt")); string(b) != "uploaded" {
		t.Errorf("signed upload wrote %q", b)
	}
	if b, _ := os.ReadFile(f); string(b) != "content" {
		t.Errorf("refused upload changed the file to %q", b)
	}
}

// TestFileSignatureMatchesTheSDK pins the algorithm to a value computed
// the way E2B's JS SDK does it (getSignature in its sandbox/signature.ts):
// "v1_" + base64(sha256("path:op:user:token[:exp]")) without padding.
func TestFileSignatureMatchesTheSDK(t *testing.T) {
	tests := []struct {
		path, op, user, token string
		exp                   int64
		want                  string
	}{
		// printf '%s' '/home/user/a.txt:read:user:tok' | openssl dgst -sha256 -binary | base64 | tr -d =
		{"/home/user/a.txt", "read", "user", "tok", 0, "v1_p0WqJQYCLtO6YX+e4h7VbpybRsdJbMbIw7clYpulIJk"},
		{"/x", "write", "", "tok", 1700000000, "v1_Xp/Z8cjI4eSGKtHCojnl+SgFPYNe6ELfHVmbjliNtOw"},
	}
	for _, tc := range tests {
		if got := httpapi.FileSignature(tc.path, tc.op, tc.user, tc.token, tc.exp); got != tc.want {
			t.Errorf("FileSignature(%q, %q, %q, %q, %d) = %q, want %q", tc.path, tc.op, tc.user, tc.token, tc.exp, got, tc.want)
		}
	}
}
