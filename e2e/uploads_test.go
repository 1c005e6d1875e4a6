package e2e

import (
	"bytes"
	"fmt"
	"mime/multipart"
	"net/http"
	"testing"
	"time"
)

// e2eMaxUpload is the control plane's WRENN_MAX_UPLOAD_BYTES in TestTwoAgents.
const e2eMaxUpload = 1 << 20

func upload(t *testing.T, c client, id, path string, data []byte) (int, []byte) {
	t.Helper()
	var body bytes.Buffer
	mw := multipart.NewWriter(&body)
	_ = mw.WriteField("path", path)
	fw, err := mw.CreateFormFile("file", "upload.bin")
	if err != nil {
		t.Fatal(err)
	}
	fw.Write(data)
	mw.Close()
	return c.raw(t, http.MethodPost, "/v1/sandboxes/"+id+"/files/write", mw.FormDataContentType(), &body)
}

// testUploads runs the upload rules through the whole platform (control
// plane, agent, envd in a VM): an upload over the limit (413) leaves an
// existing file's bytes and its directory as they were; names with tabs and
// newlines round-trip.
func testUploads(t *testing.T, c client, id string) {
	const original = "original content\n"
	c.sh(t, id, "mkdir -p /tmp/up && printf 'original content\\n' > /tmp/up/keep.txt")
	big := bytes.Repeat([]byte("x"), 2*e2eMaxUpload)
	for _, path := range []string{"/tmp/up/keep.txt", "/tmp/up/new.txt"} {
		if status, b := upload(t, c, id, path, big); status != http.StatusRequestEntityTooLarge {
			t.Fatalf("oversized upload to %s = %d %.200s", path, status, b)
		}
	}
	eventually(t, 10*time.Second, "the directory holds only the old file, unchanged", func() (bool, string) {
		r := c.sh(t, id, "cat /tmp/up/keep.txt; echo ---; ls -A /tmp/up")
		want := original + "---\nkeep.txt\n"
		return r.Stdout == want, fmt.Sprintf("%d bytes: %.80q", len(r.Stdout), r.Stdout)
	})

	for _, name := range []string{"tab\there", "new\nline"} {
		path := "/tmp/up/" + name
		data := []byte("content of " + name)
		if status, b := upload(t, c, id, path, data); status != http.StatusOK {
			t.Fatalf("upload %q = %d %s", path, status, b)
		}
		status, got := c.do(t, http.MethodPost, "/v1/sandboxes/"+id+"/files/read", map[string]string{"path": path})
		if status != http.StatusOK || !bytes.Equal(got, data) {
			t.Fatalf("read %q = %d %q", path, status, got)
		}
		var ls struct{ Entries []struct{ Name string } }
		c.must(t, http.MethodPost, "/v1/sandboxes/"+id+"/files/list", map[string]any{"path": "/tmp/up"}, &ls, http.StatusOK)
		found := false
		for _, e := range ls.Entries {
			found = found || e.Name == name
		}
		if !found {
			t.Fatalf("list /tmp/up = %+v, lacks %q", ls.Entries, name)
		}
	}
}
