package proxybody

import (
	"errors"
	"io"
	"strings"
	"testing"
)

// closedAfter fails every read once its content is gone, as a server's
// request body does once the server closed it.
type closedAfter struct{ r io.Reader }

func (c *closedAfter) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	if err == io.EOF {
		return n, errors.New("invalid Read on closed Body")
	}
	return n, err
}

func (c *closedAfter) Close() error { return nil }

func TestBody(t *testing.T) {
	cases := []struct {
		name    string
		content string
		n       int64
		want    string
		wantErr bool
	}{
		{"known length ends itself", "hello world", 11, "hello world", false},
		{"known length shorter than the content", "hello world", 5, "hello", false},
		{"empty", "", 0, "", false},
		{"unknown length reads the source's error", "hello", -1, "hello", true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			reads := 0
			b := New(&closedAfter{strings.NewReader(tc.content)}, tc.n, func() { reads++ })
			got, err := io.ReadAll(b)
			if string(got) != tc.want || (err != nil) != tc.wantErr {
				t.Fatalf("ReadAll = %q, %v", got, err)
			}
			if tc.want != "" && reads == 0 {
				t.Fatal("onRead never ran")
			}
		})
	}
}
