package server

import (
	"encoding/json"
	"maps"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"

	fspb "github.com/wrenn-dev/wrenn/proto/envd/filesystem"
)

// uploadMeta uploads body to p with hdr and returns the status and the
// answer's entries.
func (e *env) uploadMeta(p, body string, hdr map[string]string) (int, []map[string]any) {
	e.t.Helper()
	res := e.do("POST", "/files?path="+p, strings.NewReader(body), hdr)
	out := readAll(e.t, res)
	var ents []map[string]any
	if res.StatusCode == 200 {
		if err := json.Unmarshal([]byte(out), &ents); err != nil {
			e.t.Fatalf("upload answer %s: %v", out, err)
		}
	}
	return res.StatusCode, ents
}

func metaOf(ent map[string]any) map[string]string {
	raw, _ := ent["metadata"].(map[string]any)
	if raw == nil {
		return nil
	}
	md := map[string]string{}
	for k, v := range raw {
		md[k], _ = v.(string)
	}
	return md
}

// TestFileMetadata: X-Metadata-* upload headers become user.* extended
// attributes, returned by the upload, Stat, ListDir and Move.
func TestFileMetadata(t *testing.T) {
	e := newEnv(t, Config{})
	ctx := ctxT(t, 30*time.Second)
	dir := t.TempDir()
	p := filepath.Join(dir, "doc.txt")
	long := strings.Repeat("k", 300)

	steps := []struct {
		name     string
		body     string
		hdr      map[string]string
		wantCode int
		// want is the file's metadata after the step (nil: none).
		want        map[string]string
		wantContent string
	}{
		{"plain upload has none", "v1", nil, 200, nil, "v1"},
		{"headers are stored, keys lower-cased", "v2", map[string]string{"X-Metadata-Owner": "alice", "x-metadata-Build_ID": "42"}, 200,
			map[string]string{"owner": "alice", "build_id": "42"}, "v2"},
		{"a new upload without headers keeps them", "v3", nil, 200, map[string]string{"owner": "alice", "build_id": "42"}, "v3"},
		{"a header replaces one key, others stay", "v4", map[string]string{"X-Metadata-Owner": "bob", "X-Metadata-Empty": ""}, 200,
			map[string]string{"owner": "bob", "build_id": "42", "empty": ""}, "v4"},
		{"a control character is refused", "bad", map[string]string{"X-Metadata-Note": "a\tb"}, 400, map[string]string{"owner": "bob", "build_id": "42", "empty": ""}, "v4"},
		{"a non-ASCII value is refused", "bad", map[string]string{"X-Metadata-Note": "café"}, 400, map[string]string{"owner": "bob", "build_id": "42", "empty": ""}, "v4"},
		{"too long a key is refused", "bad", map[string]string{"X-Metadata-" + long: "x"}, 400, map[string]string{"owner": "bob", "build_id": "42", "empty": ""}, "v4"},
		{"too much metadata is refused", "bad", map[string]string{"X-Metadata-Big": strings.Repeat("x", 4000)}, 400, map[string]string{"owner": "bob", "build_id": "42", "empty": ""}, "v4"},
	}
	for _, st := range steps {
		code, ents := e.uploadMeta(p, st.body, st.hdr)
		if code != st.wantCode {
			t.Fatalf("%s: status %d, want %d", st.name, code, st.wantCode)
		}
		if code == 200 && (len(ents) != 1 || !maps.Equal(metaOf(ents[0]), st.want)) {
			t.Errorf("%s: upload answered %v, want metadata %v", st.name, ents, st.want)
		}
		if b, _ := os.ReadFile(p); string(b) != st.wantContent {
			t.Errorf("%s: content %q, want %q", st.name, b, st.wantContent)
		}
		res, err := e.fs.Stat(ctx, connect.NewRequest(&fspb.StatRequest{Path: p}))
		if err != nil {
			t.Fatalf("%s: stat: %v", st.name, err)
		}
		if got := res.Msg.Entry.GetMetadata(); !maps.Equal(got, st.want) {
			t.Errorf("%s: stat metadata %v, want %v", st.name, got, st.want)
		}
	}
	want := map[string]string{"owner": "bob", "build_id": "42", "empty": ""}

	list, err := e.fs.ListDir(ctx, connect.NewRequest(&fspb.ListDirRequest{Path: dir}))
	if err != nil || len(list.Msg.Entries) != 1 || !maps.Equal(list.Msg.Entries[0].GetMetadata(), want) {
		t.Errorf("list: %v %v, want metadata %v", list, err, want)
	}
	dst := filepath.Join(dir, "moved", "doc.txt")
	mv, err := e.fs.Move(ctx, connect.NewRequest(&fspb.MoveRequest{Source: p, Destination: dst}))
	if err != nil || !maps.Equal(mv.Msg.Entry.GetMetadata(), want) {
		t.Errorf("move: %v %v, want metadata %v", mv, err, want)
	}
	// A link shows the metadata of what it points at.
	link := filepath.Join(dir, "link")
	if err := os.Symlink(dst, link); err != nil {
		t.Fatal(err)
	}
	ls, err := e.fs.Stat(ctx, connect.NewRequest(&fspb.StatRequest{Path: link}))
	if err != nil || !maps.Equal(ls.Msg.Entry.GetMetadata(), want) {
		t.Errorf("stat link: %v %v, want metadata %v", ls, err, want)
	}
}
