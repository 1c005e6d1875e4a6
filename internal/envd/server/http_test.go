package server

import (
	"bytes"
	"compress/gzip"
	"encoding/json"
	"fmt"
	"io"
	"mime/multipart"
	"net/http"
	"net/textproto"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/wrenn-dev/wrenn/internal/envd/uploads"
	"github.com/wrenn-dev/wrenn/internal/testenv"
	fspb "github.com/wrenn-dev/wrenn/proto/envd/filesystem"
	"github.com/wrenn-dev/wrenn/proto/envd/filesystem/filesystemconnect"
	pb "github.com/wrenn-dev/wrenn/proto/envd/process"
	"github.com/wrenn-dev/wrenn/proto/envd/process/processconnect"
)

func TestHealthAndMetrics(t *testing.T) {
	e := newEnv(t, Config{})
	if res := e.do("GET", "/health", nil, nil); res.StatusCode != http.StatusNoContent {
		t.Fatalf("health = %d", res.StatusCode)
	}
	res := e.do("GET", "/metrics", nil, nil)
	if res.StatusCode != 200 {
		t.Fatalf("metrics = %d", res.StatusCode)
	}
	var m map[string]float64
	if err := json.Unmarshal([]byte(readAll(t, res)), &m); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"ts", "cpu_count", "mem_total", "mem_used", "disk_total", "disk_used"} {
		if m[k] <= 0 {
			t.Errorf("metrics[%s] = %v", k, m[k])
		}
	}
	if p := m["cpu_used_pct"]; p < 0 || p > 100 {
		t.Errorf("cpu_used_pct = %v", p)
	}
	if _, ok := m["cpu_used_pct"]; !ok {
		t.Error("cpu_used_pct missing")
	}
}

func TestInitEnvsAndToken(t *testing.T) {
	wd := t.TempDir()
	e := newEnv(t, Config{})
	ctx := ctxT(t, 20*time.Second)
	post := func(body string) int {
		res := e.do("POST", "/init", strings.NewReader(body), map[string]string{"Content-Type": "application/json"})
		readAll(t, res)
		return res.StatusCode
	}
	bad := []string{`{`, `{"envVars":{"A=B":"x"}}`, `{"defaultWorkdir":"relative"}`, `{"defaultUser":"no-such-user-x"}`, `{"timestamp":"yesterday"}`}
	for _, b := range bad {
		if code := post(b); code != http.StatusBadRequest {
			t.Errorf("init %s = %d, want 400", b, code)
		}
	}
	// No token yet: everything is open.
	if code := post(fmt.Sprintf(`{"envVars":{"WRENN_A":"1"},"defaultWorkdir":%q,"timestamp":%q}`, wd, time.Now().Format(time.RFC3339))); code != http.StatusNoContent {
		t.Fatalf("init = %d", code)
	}
	if code := post(`{"envVars":{"WRENN_B":"2"},"accessToken":"s3cret"}`); code != http.StatusNoContent {
		t.Fatalf("init with token = %d", code)
	}
	// From now on the token is needed everywhere but /health.
	checks := []struct {
		name string
		call func() int // HTTP status or connect code
		open int
	}{
		{"health", func() int { return e.do("GET", "/health", nil, nil).StatusCode }, 204},
		{"envs", func() int { return e.do("GET", "/envs", nil, nil).StatusCode }, 200},
		{"metrics", func() int { return e.do("GET", "/metrics", nil, nil).StatusCode }, 200},
		{"files get", func() int { return e.do("GET", "/files?path=/etc/hostname", nil, nil).StatusCode }, 200},
		{"files post", func() int {
			return e.do("POST", "/files?path="+filepath.Join(wd, "t"), strings.NewReader("x"), nil).StatusCode
		}, 200},
		{"init", func() int { return e.do("POST", "/init", strings.NewReader(`{}`), nil).StatusCode }, 204},
		{"rpc list", func() int {
			_, err := e.proc.List(ctx, connect.NewRequest(&pb.ListRequest{}))
			return int(codeOf(err))
		}, 0},
		{"rpc stat", func() int {
			_, err := e.fs.Stat(ctx, connect.NewRequest(&fspb.StatRequest{Path: "/"}))
			return int(codeOf(err))
		}, 0},
		{"rpc start", func() int {
			_, err := e.run(ctx, sh("true"), nil)
			return int(codeOf(err))
		}, 0},
	}
	for _, tok := range []string{"", "wrong", "s3cret"} {
		e.token = tok
		for _, c := range checks {
			got := c.call()
			want := c.open
			if tok != "s3cret" && c.name != "health" {
				want = http.StatusUnauthorized
				if strings.HasPrefix(c.name, "rpc") {
					want = int(connect.CodeUnauthenticated)
				}
			}
			if got != want {
				t.Errorf("token %q, %s: got %d, want %d", tok, c.name, got, want)
			}
		}
	}
	e.token = "s3cret"
	var envs map[string]string
	json.Unmarshal([]byte(readAll(t, e.do("GET", "/envs", nil, nil))), &envs)
	if envs["WRENN_A"] != "1" || envs["WRENN_B"] != "2" {
		t.Errorf("envs = %v", envs)
	}
	// Processes get the /init environment and default workdir.
	res, err := e.run(ctx, sh(`echo "$WRENN_A$WRENN_B $(pwd)"`), nil)
	if err != nil || res.stdout.String() != "12 "+wd+"\n" {
		t.Errorf("process env/cwd: %q %v", res.stdout.String(), err)
	}
	// /init again (after a restore) may rotate the token.
	if code := post(`{"accessToken":"next"}`); code != http.StatusNoContent {
		t.Fatalf("re-init = %d", code)
	}
	if code := e.do("GET", "/envs", nil, nil).StatusCode; code != http.StatusUnauthorized {
		t.Errorf("old token after rotation: %d", code)
	}
	e.token = "next"
	if code := e.do("GET", "/envs", nil, nil).StatusCode; code != 200 {
		t.Errorf("new token: %d", code)
	}
}

func TestInitSetsClockOnlyWhenAllowed(t *testing.T) {
	var got time.Time
	e := newEnv(t, Config{SetClock: func(tm time.Time) error { got = tm; return nil }})
	want := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	res := e.do("POST", "/init", strings.NewReader(`{"timestamp":"2030-01-02T03:04:05Z"}`), nil)
	if res.StatusCode != 204 || !got.Equal(want) {
		t.Fatalf("status %d, clock set to %v", res.StatusCode, got)
	}
}

func TestFilesUploadDownload(t *testing.T) {
	e := newEnv(t, Config{})
	dir := t.TempDir()
	content := bytes.Repeat([]byte("0123456789"), 100_000)

	t.Run("raw upload creates parents and replaces atomically", func(t *testing.T) {
		p := filepath.Join(dir, "raw", "deep", "f.bin")
		for i := range 2 {
			body := append([]byte{byte('a' + i)}, content...)
			res := e.do("POST", "/files?path="+p, bytes.NewReader(body), map[string]string{"Content-Type": "application/octet-stream"})
			out := readAll(t, res)
			var ents []map[string]string
			if res.StatusCode != 200 || json.Unmarshal([]byte(out), &ents) != nil || len(ents) != 1 || ents[0]["path"] != p || ents[0]["type"] != "file" || ents[0]["name"] != "f.bin" {
				t.Fatalf("upload %d: %d %s", i, res.StatusCode, out)
			}
			got, _ := os.ReadFile(p)
			if !bytes.Equal(got, body) {
				t.Fatalf("content mismatch after upload %d", i)
			}
		}
		ents, _ := os.ReadDir(filepath.Dir(p))
		if len(ents) != 1 {
			t.Errorf("temporary files left: %v", ents)
		}
	})

	t.Run("multipart", func(t *testing.T) {
		var buf bytes.Buffer
		mw := multipart.NewWriter(&buf)
		mw.WriteField("other", "ignored")
		for _, name := range []string{filepath.Join(dir, "mp", "one.txt"), filepath.Join(dir, "mp", "sub", "two.txt")} {
			h := textproto.MIMEHeader{}
			h.Set("Content-Disposition", fmt.Sprintf(`form-data; name="file"; filename=%q`, name))
			w, _ := mw.CreatePart(h)
			w.Write([]byte("content of " + filepath.Base(name)))
		}
		mw.Close()
		res := e.do("POST", "/files", &buf, map[string]string{"Content-Type": mw.FormDataContentType()})
		out := readAll(t, res)
		if res.StatusCode != 200 || strings.Count(out, `"type":"file"`) != 2 {
			t.Fatalf("multipart: %d %s", res.StatusCode, out)
		}
		got, _ := os.ReadFile(filepath.Join(dir, "mp", "sub", "two.txt"))
		if string(got) != "content of two.txt" {
			t.Errorf("two.txt = %q", got)
		}
		// With ?path= the single part goes there whatever its file name.
		buf.Reset()
		mw = multipart.NewWriter(&buf)
		w, _ := mw.CreateFormFile("file", "ignored-name")
		w.Write([]byte("by path"))
		mw.Close()
		p := filepath.Join(dir, "mp", "bypath.txt")
		res = e.do("POST", "/files?path="+p, &buf, map[string]string{"Content-Type": mw.FormDataContentType()})
		readAll(t, res)
		if got, _ := os.ReadFile(p); res.StatusCode != 200 || string(got) != "by path" {
			t.Errorf("by path: %d %q", res.StatusCode, got)
		}
	})

	t.Run("gzip upload", func(t *testing.T) {
		var zb bytes.Buffer
		zw := gzip.NewWriter(&zb)
		zw.Write(content)
		zw.Close()
		p := filepath.Join(dir, "gz.bin")
		res := e.do("POST", "/files?path="+p, &zb, map[string]string{"Content-Type": "application/octet-stream", "Content-Encoding": "gzip"})
		readAll(t, res)
		if got, _ := os.ReadFile(p); res.StatusCode != 200 || !bytes.Equal(got, content) {
			t.Errorf("gzip upload: %d", res.StatusCode)
		}
	})

	p := filepath.Join(dir, "dl.bin")
	os.WriteFile(p, content, 0o644)
	t.Run("download and range", func(t *testing.T) {
		tests := []struct {
			rng        string
			wantStatus int
			want       []byte
		}{
			{"", 200, content},
			{"bytes=10-19", 206, content[10:20]},
			{"bytes=-5", 206, content[len(content)-5:]},
			{"bytes=999999-", 206, content[999999:]},
			{"bytes=2000000-", 416, nil},
		}
		for _, tc := range tests {
			hdr := map[string]string{}
			if tc.rng != "" {
				hdr["Range"] = tc.rng
			}
			res := e.do("GET", "/files?path="+p, nil, hdr)
			got := readAll(t, res)
			if res.StatusCode != tc.wantStatus || (tc.want != nil && got != string(tc.want)) {
				t.Errorf("range %q: %d, %d bytes", tc.rng, res.StatusCode, len(got))
			}
		}
	})

	t.Run("errors", func(t *testing.T) {
		tests := []struct {
			method, path string
			body         string
			ctype        string
			want         int
		}{
			{"GET", "/files?path=" + filepath.Join(dir, "missing"), "", "", 404},
			{"GET", "/files?path=" + dir, "", "", 400},
			{"GET", "/files", "", "", 400},
			{"GET", "/files?path=/etc/hostname&username=no-such-user-x", "", "", 401},
			{"POST", "/files", "raw without path", "application/octet-stream", 400},
			{"POST", "/files?path=" + dir, "x", "application/octet-stream", 400},
			{"POST", "/files?path=" + filepath.Join(dir, "dl.bin", "below-file"), "x", "application/octet-stream", 400},
			{"POST", "/files?path=/x", "x", "multipart/form-data", 400},
			{"POST", "/files?path=/x", "--b\r\nbroken", "multipart/form-data; boundary=b", 400},
			{"POST", "/files?path=" + filepath.Join(dir, "gzbad"), "not gzip", "application/octet-stream", 0},
		}
		for _, tc := range tests {
			hdr := map[string]string{}
			if tc.ctype != "" {
				hdr["Content-Type"] = tc.ctype
			}
			want := tc.want
			if want == 0 { // the bad gzip case
				hdr["Content-Encoding"] = "gzip"
				want = 400
			}
			res := e.do(tc.method, tc.path, strings.NewReader(tc.body), hdr)
			out := readAll(t, res)
			var je struct {
				Message string `json:"message"`
				Code    int    `json:"code"`
			}
			if res.StatusCode != want || json.Unmarshal([]byte(out), &je) != nil || je.Code != want || je.Message == "" {
				t.Errorf("%s %s: %d %s, want %d with a JSON error", tc.method, tc.path, res.StatusCode, out, want)
			}
		}
	})
}

func TestFilesAsUser(t *testing.T) {
	requireRoot(t)
	e := newEnv(t, Config{})
	dir := t.TempDir()
	os.Chmod(dir, 0o777)
	p := filepath.Join(dir, "owned", "f")
	res := e.do("POST", "/files?username=nobody&path="+p, strings.NewReader("x"), nil)
	readAll(t, res)
	if _, err := os.Stat(p); res.StatusCode != 200 || err != nil {
		t.Fatalf("upload as nobody: %d %v", res.StatusCode, err)
	}
	for _, q := range []string{p, filepath.Dir(p)} {
		st, err := os.Stat(q)
		if err != nil {
			t.Fatal(err)
		}
		if sys := st.Sys().(*syscall.Stat_t); sys.Uid != 65534 || sys.Gid != 65534 {
			t.Errorf("%s owned by %d:%d, want nobody", q, sys.Uid, sys.Gid)
		}
	}
	// A root-only file is not readable as nobody.
	secret := filepath.Join(dir, "secret")
	os.WriteFile(secret, []byte("s"), 0o600)
	if res := e.do("GET", "/files?username=nobody&path="+secret, nil, nil); res.StatusCode != 401 {
		t.Errorf("read root-only file as nobody: %d", res.StatusCode)
	}
	// Nor writable: envd runs as root but writes with the user's permissions.
	rootDir := filepath.Join(dir, "root-only")
	if err := os.Mkdir(rootDir, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, path string
	}{
		{"overwrite a root file", secret},
		{"new file in a root directory", filepath.Join(rootDir, "new")},
		{"new directories under a root directory", filepath.Join(rootDir, "a", "b", "new")},
	} {
		res := e.do("POST", "/files?username=nobody&path="+tc.path, strings.NewReader("changed"), nil)
		body := readAll(t, res)
		if res.StatusCode != 401 {
			t.Errorf("%s as nobody: %d %s, want 401", tc.name, res.StatusCode, body)
		}
	}
	if b, _ := os.ReadFile(secret); string(b) != "s" {
		t.Errorf("root file changed to %q", b)
	}
	if _, err := os.Stat(filepath.Join(rootDir, "new")); err == nil {
		t.Error("nobody created a file in a root-only directory")
	}
	if _, err := os.Stat(filepath.Join(rootDir, "a")); err == nil {
		t.Error("nobody created a directory in a root-only directory")
	}
}

func TestUploadDiskFull(t *testing.T) {
	requireRoot(t)
	dir := t.TempDir()
	mountOut, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=1m", "wrenn-envd-test", dir).CombinedOutput()
	testenv.Require(t, err == nil, "cannot mount a small tmpfs: %v %s", err, mountOut)
	t.Cleanup(func() { exec.Command("umount", dir).Run() })
	e := newEnv(t, Config{})
	p := filepath.Join(dir, "big")
	res := e.do("POST", "/files?path="+p, io.LimitReader(zeroReader{}, 4<<20), nil)
	out := readAll(t, res)
	if res.StatusCode != http.StatusInsufficientStorage {
		t.Fatalf("upload to a full disk: %d %s", res.StatusCode, out)
	}
	// The staging directory of uploads (at the mount's root) may stay, empty.
	ents, _ := os.ReadDir(dir)
	for _, en := range ents {
		if en.Name() != uploads.StagingName {
			t.Errorf("left behind: %v", en.Name())
		}
	}
	if staged, _ := os.ReadDir(filepath.Join(dir, uploads.StagingName)); len(staged) != 0 {
		t.Errorf("staged files left behind: %v", staged)
	}
}

type zeroReader struct{}

func (zeroReader) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}

func TestPowerOffEndpoint(t *testing.T) {
	called := make(chan struct{}, 1)
	e := newEnv(t, Config{PowerOff: func() { called <- struct{}{} }})
	if res := e.do("POST", "/wrenn/poweroff", nil, nil); res.StatusCode != http.StatusAccepted {
		t.Fatalf("poweroff = %d", res.StatusCode)
	}
	select {
	case <-called:
	case <-time.After(5 * time.Second):
		t.Fatal("power off not requested")
	}
	e2 := newEnv(t, Config{})
	if res := e2.do("POST", "/wrenn/poweroff", nil, nil); res.StatusCode != http.StatusNotImplemented {
		t.Fatalf("poweroff without support = %d", res.StatusCode)
	}
}

func TestHTTP1Connect(t *testing.T) {
	// Connect over plain HTTP/1.1 (what curl and E2B's fetch-based SDK use).
	e := newEnv(t, Config{})
	body := `{"path":"/"}`
	req, _ := http.NewRequest("POST", e.url+"/filesystem.Filesystem/Stat", strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	res, err := e.h1.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	out := readAll(t, res)
	if res.StatusCode != 200 || res.ProtoMajor != 1 || !strings.Contains(out, `"FILE_TYPE_DIRECTORY"`) {
		t.Fatalf("%d %s %s", res.StatusCode, res.Proto, out)
	}
}

func TestGRPCAndGRPCWeb(t *testing.T) {
	e := newEnv(t, Config{})
	ctx := ctxT(t, 20*time.Second)
	tests := []struct {
		name   string
		client *http.Client
		opt    connect.ClientOption
	}{
		{"grpc over h2c", e.hc, connect.WithGRPC()},
		{"grpc-web over http/1.1", e.h1, connect.WithGRPCWeb()},
		{"connect over http/1.1", e.h1, connect.WithProtoJSON()},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			pc := processconnect.NewProcessClient(tc.client, e.url, tc.opt)
			st, err := pc.Start(ctx, connect.NewRequest(sh("echo via-"+strings.Fields(tc.name)[0])))
			if err != nil {
				t.Fatal(err)
			}
			defer st.Close()
			res := &result{}
			for st.Receive() {
				collect(res, st.Msg().GetEvent())
			}
			if st.Err() != nil || res.end == nil || res.stdout.String() != "via-"+strings.Fields(tc.name)[0]+"\n" {
				t.Fatalf("stdout %q end %v err %v", res.stdout.String(), res.end, st.Err())
			}
			fc := filesystemconnect.NewFilesystemClient(tc.client, e.url, tc.opt)
			if _, err := fc.Stat(ctx, connect.NewRequest(&fspb.StatRequest{Path: "/no/such"})); codeOf(err) != connect.CodeNotFound {
				t.Fatalf("error mapping over %s: %v", tc.name, err)
			}
		})
	}
}
