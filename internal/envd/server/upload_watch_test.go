package server

import (
	"bytes"
	"compress/gzip"
	"fmt"
	"mime/multipart"
	"net/textproto"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/wrenn-dev/wrenn/internal/envd/uploads"
	fspb "github.com/wrenn-dev/wrenn/proto/envd/filesystem"
)

// watchEvents collects the events of one watch of dir as "type:name".
type watchEvents struct {
	c chan string
}

func (e *env) watchDir(t *testing.T, dir string, recursive bool) *watchEvents {
	t.Helper()
	ctx := ctxT(t, time.Minute)
	st, err := e.fs.WatchDir(ctx, connect.NewRequest(&fspb.WatchDirRequest{Path: dir, Recursive: recursive}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	if !st.Receive() || st.Msg().GetStart() == nil {
		t.Fatalf("first event is not start: %v %v", st.Msg(), st.Err())
	}
	w := &watchEvents{c: make(chan string, 1000)}
	go func() {
		defer close(w.c)
		for st.Receive() {
			if f := st.Msg().GetFilesystem(); f != nil {
				w.c <- strings.ToLower(strings.TrimPrefix(f.Type.String(), "EVENT_TYPE_")) + ":" + f.Name
			}
		}
	}()
	return w
}

// until returns the events up to and including want.
func (w *watchEvents) until(t *testing.T, want string) []string {
	t.Helper()
	var got []string
	timeout := time.After(10 * time.Second)
	for {
		select {
		case ev, ok := <-w.c:
			if !ok {
				t.Fatalf("watch ended; got %v", got)
			}
			got = append(got, ev)
			if ev == want {
				return got
			}
		case <-timeout:
			t.Fatalf("no %q; got %v", want, got)
		}
	}
}

func gzipped(s string) []byte {
	var b bytes.Buffer
	zw := gzip.NewWriter(&b)
	zw.Write([]byte(s))
	zw.Close()
	return b.Bytes()
}

// TestUploadSeenByWatchers: an upload shows as a WRITE on the file's own
// name, no event names a temporary file, and a failed upload leaves the
// old content and no trace.
func TestUploadSeenByWatchers(t *testing.T) {
	requireRoot(t) // the staging directory sits at the root of the mount
	e := newEnv(t, Config{})
	dir := t.TempDir()
	if err := os.Mkdir(filepath.Join(dir, "sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "old.txt"), []byte("old"), 0o644); err != nil {
		t.Fatal(err)
	}
	multipartBody := func(p, content string) (*bytes.Buffer, string) {
		var buf bytes.Buffer
		mw := multipart.NewWriter(&buf)
		h := textproto.MIMEHeader{}
		h.Set("Content-Disposition", fmt.Sprintf(`form-data; name="file"; filename=%q`, p))
		w, _ := mw.CreatePart(h)
		w.Write([]byte(content))
		mw.Close()
		return &buf, mw.FormDataContentType()
	}
	truncated := gzipped(strings.Repeat("lost ", 10_000))
	truncated = truncated[:len(truncated)/2]

	tests := []struct {
		name      string
		rel       string // file uploaded, relative to dir
		recursive bool
		body      func(p string) ([]byte, map[string]string)
		wantCode  int
		// wantEvents must appear in this order; a failed upload must show
		// no event on rel at all.
		wantEvents  []string
		wantContent string
	}{
		{"new file (raw)", "new.txt", false,
			func(string) ([]byte, map[string]string) { return []byte("new"), nil },
			200, []string{"create:new.txt", "write:new.txt"}, "new"},
		{"replaced file (raw)", "old.txt", false,
			func(string) ([]byte, map[string]string) { return []byte("replaced"), nil },
			200, []string{"write:old.txt"}, "replaced"},
		{"new file (multipart)", "mp.txt", false,
			func(p string) ([]byte, map[string]string) {
				b, ct := multipartBody(p, "multi")
				return b.Bytes(), map[string]string{"Content-Type": ct}
			},
			200, []string{"create:mp.txt", "write:mp.txt"}, "multi"},
		{"in a subdirectory, recursive watch", "sub/deep.txt", true,
			func(string) ([]byte, map[string]string) { return []byte("deep"), nil },
			200, []string{"create:sub/deep.txt", "write:sub/deep.txt"}, "deep"},
		{"failed upload keeps the old content", "old.txt", true,
			func(string) ([]byte, map[string]string) {
				return truncated, map[string]string{"Content-Encoding": "gzip"}
			},
			400, nil, "replaced"},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			w := e.watchDir(t, dir, tc.recursive)
			p := filepath.Join(dir, tc.rel)
			body, hdr := tc.body(p)
			res := e.do("POST", "/files?path="+p, bytes.NewReader(body), hdr)
			out := readAll(t, res)
			if res.StatusCode != tc.wantCode && !(tc.wantCode == 400 && res.StatusCode >= 400) {
				t.Fatalf("upload: %d %s, want %d", res.StatusCode, out, tc.wantCode)
			}
			// A sentinel written after the answer ends what this case did.
			sentinel := fmt.Sprintf("end-%d", i)
			if err := os.WriteFile(filepath.Join(dir, sentinel), nil, 0o644); err != nil {
				t.Fatal(err)
			}
			got := w.until(t, "create:"+sentinel)
			next := 0
			for _, ev := range got {
				name := ev[strings.IndexByte(ev, ':')+1:]
				if strings.Contains(name, ".tmp-") || strings.Contains(name, uploads.StagingName) {
					t.Errorf("event names a temporary file: %q (all: %v)", ev, got)
				}
				if tc.wantEvents == nil && name == tc.rel {
					t.Errorf("failed upload shows %q (all: %v)", ev, got)
				}
				if next < len(tc.wantEvents) && ev == tc.wantEvents[next] {
					next++
				}
			}
			if next != len(tc.wantEvents) {
				t.Errorf("events %v, want in order %v", got, tc.wantEvents)
			}
			if b, _ := os.ReadFile(p); string(b) != tc.wantContent {
				t.Errorf("content %q, want %q", b, tc.wantContent)
			}
			list, err := e.fs.ListDir(ctxT(t, 10*time.Second), connect.NewRequest(&fspb.ListDirRequest{Path: "/"}))
			if err != nil {
				t.Fatalf("list /: %v", err)
			}
			for _, en := range list.Msg.Entries {
				if en.Name == uploads.StagingName {
					t.Errorf("ListDir / shows the staging directory")
				}
			}
			ents, _ := os.ReadDir(filepath.Dir(p))
			for _, en := range ents {
				if strings.Contains(en.Name(), ".tmp-") {
					t.Errorf("temporary file left beside the target: %s", en.Name())
				}
			}
		})
	}
}
