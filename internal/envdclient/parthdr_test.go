package envdclient

import (
	"mime"
	"testing"
)

// The part header names the file so that envd's one decode (mime, as for
// any RFC 7578 / RFC 2231 parameter) gives back the exact name, whatever
// characters it holds.
func TestFilePartHeaderNameDecodesOnce(t *testing.T) {
	for _, name := range []string{"plain.txt", "tab\there", "new\nline", "cr\rhere", `quote"back\slash`, "%41 percent", "é ü 文件"} {
		_, params, err := mime.ParseMediaType(filePartHeader("/root/dir/" + name).Get("Content-Disposition"))
		if err != nil {
			t.Fatalf("%q: parse header: %v", name, err)
		}
		if params["filename"] != name || params["name"] != "file" {
			t.Errorf("%q: header decodes to %q (name %q)", name, params["filename"], params["name"])
		}
	}
}
