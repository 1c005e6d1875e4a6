package api

import (
	"bytes"
	"errors"
	"io"
	"mime/multipart"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"
)

// These tests run the whole write path for real: control plane -> agent
// (WriteFileStream) -> envd (/files), with envd a host process.

// readBack reads path through the API.
func (e *env) readBack(c cred, id, path string) (int, []byte) {
	e.t.Helper()
	return e.do("POST", sbPath(id, "/files/read"), map[string]string{"path": path}, c)
}

// listNames lists dir's entry names through the API.
func (e *env) listNames(c cred, id, dir string) []string {
	e.t.Helper()
	var ls struct{ Entries []struct{ Name string } }
	e.want("POST", sbPath(id, "/files/list"), map[string]any{"path": dir}, c, 200, &ls)
	var names []string
	for _, en := range ls.Entries {
		names = append(names, en.Name)
	}
	slices.Sort(names)
	return names
}

// failingBody yields a multipart upload whose file part breaks off after
// some bytes with a read error: a client that goes away mid-upload.
type failingBody struct {
	r io.Reader
}

func (f *failingBody) Read(p []byte) (int, error) {
	n, err := f.r.Read(p)
	if errors.Is(err, io.EOF) {
		return n, errors.New("test: client broke off")
	}
	return n, err
}

// An upload that fails on the way in leaves an existing target's bytes as
// they were and creates nothing new (not even a temporary file).
func TestFailedUploadLeavesTargetUnchanged(t *testing.T) {
	e := newEnv(t, func(o *envOpts) { o.maxUpload = 64 << 10; o.realAgent = true })
	owner := e.signup("owner@example.com")
	c := owner.cred()
	sb := e.createSandbox(c, nil)
	const original = "original content\n" // 17 bytes
	if st, b := e.upload(sb.ID, c, []part{{"path", "/root/keep.txt"}, {"file", original}}); st != 200 {
		t.Fatalf("first upload = %d %s", st, b)
	}
	big := strings.Repeat("x", 2<<20)

	cases := []struct {
		name string
		send func(path string) int
		want int // 0: any failure status
	}{
		{"over the upload limit", func(path string) int {
			st, _ := e.upload(sb.ID, c, []part{{"path", path}, {"file", big}})
			return st
		}, http.StatusRequestEntityTooLarge},
		{"client breaks off", func(path string) int {
			// Under the limit, so only the broken body stops it.
			var buf bytes.Buffer
			mw := multipart.NewWriter(&buf)
			_ = mw.WriteField("path", path)
			w, _ := mw.CreateFormFile("file", "f")
			_, _ = io.WriteString(w, strings.Repeat("y", 40<<10)) // no closing boundary
			req, _ := http.NewRequest("POST", e.srv.URL+sbPath(sb.ID, "/files/write"), &failingBody{r: &buf})
			req.Header.Set("Content-Type", mw.FormDataContentType())
			c.apply(req)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				return 0 // the client saw its own failure
			}
			resp.Body.Close()
			return resp.StatusCode
		}, 0},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			for _, path := range []string{"/root/keep.txt", "/root/new.txt"} {
				st := tc.send(path)
				if (tc.want != 0 && st != tc.want) || (tc.want == 0 && st == 200) {
					t.Fatalf("upload to %s = %d, want %d", path, st, tc.want)
				}
			}
			st, got := e.readBack(c, sb.ID, "/root/keep.txt")
			if st != 200 || string(got) != original {
				t.Fatalf("existing file after a failed upload: %d, %d bytes %.40q", st, len(got), got)
			}
			// envd notices an abort on its own time; its temporary file must go.
			deadline := time.Now().Add(5 * time.Second)
			for names := e.listNames(c, sb.ID, "/root"); !slices.Equal(names, []string{"keep.txt"}); names = e.listNames(c, sb.ID, "/root") {
				if time.Now().After(deadline) {
					t.Fatalf("/root after failed uploads = %q, want only keep.txt", names)
				}
				time.Sleep(20 * time.Millisecond)
			}
		})
	}
}

// File names with control characters go through every hop (multipart
// field, Connect, envd's /files) and come back the same.
func TestFileNamesWithControlCharacters(t *testing.T) {
	e := newEnv(t, func(o *envOpts) { o.realAgent = true })
	owner := e.signup("owner@example.com")
	c := owner.cred()
	sb := e.createSandbox(c, nil)
	for _, name := range []string{"tab\there", "new\nline", "both\t\nand \"quotes\" \\ %41 é"} {
		t.Run(name, func(t *testing.T) {
			path := "/root/" + name
			body := "content of " + name
			if st, b := e.upload(sb.ID, c, []part{{"path", path}, {"file", body}}); st != 200 {
				t.Fatalf("upload %q = %d %s", path, st, b)
			}
			if !slices.Contains(e.listNames(c, sb.ID, "/root"), name) {
				t.Fatalf("list of /root lacks %q: %q", name, e.listNames(c, sb.ID, "/root"))
			}
			if st, got := e.readBack(c, sb.ID, path); st != 200 || string(got) != body {
				t.Fatalf("read %q = %d %q", path, st, got)
			}
		})
	}
}
