package wrenn

import (
	"context"
	"fmt"
	"io"
	"mime/multipart"

	"github.com/wrenn-dev/wrenn/sdk/go/wrenn/wrennapi"
)

// Files is the sandbox's filesystem.
type Files struct{ s *Sandbox }

// Files returns the sandbox's filesystem operations.
func (s *Sandbox) Files() Files { return Files{s} }

// Entry is a file or directory in a listing.
type Entry = wrennapi.Entry

// WriteResult is a written file's path and size.
type WriteResult = wrennapi.WriteResult

// Write streams r into the file at path (created or replaced; its
// directory must exist: see MakeDir); nothing is held in memory.
func (f Files) Write(ctx context.Context, path string, r io.Reader) (*WriteResult, error) {
	pr, pw := io.Pipe()
	mw := multipart.NewWriter(pw)
	go func() {
		err := mw.WriteField("path", path)
		if err == nil {
			var part io.Writer
			if part, err = mw.CreateFormFile("file", "upload"); err == nil {
				if _, err = io.Copy(part, r); err == nil {
					err = mw.Close()
				}
			}
		}
		pw.CloseWithError(err)
	}()
	resp, err := f.s.c.api.WriteFileWithBodyWithResponse(ctx, f.s.Id, &wrennapi.WriteFileParams{}, mw.FormDataContentType(), pr)
	pr.Close()
	return do(resp, err, func() *WriteResult { return resp.JSON200 })
}

// Read streams the file at path; the caller closes it. A transfer cut
// short ends in an error, never in a short file.
func (f Files) Read(ctx context.Context, path string) (io.ReadCloser, error) {
	resp, err := f.s.c.api.ReadFile(ctx, f.s.Id, wrennapi.ReadFileJSONRequestBody{Path: path})
	if err != nil {
		return nil, err
	}
	if resp.ContentLength >= 0 {
		return &sizedBody{rc: resp.Body, left: resp.ContentLength}, nil
	}
	return resp.Body, nil
}

// sizedBody reports io.ErrUnexpectedEOF when the body ends before its
// Content-Length.
type sizedBody struct {
	rc   io.ReadCloser
	left int64
}

func (b *sizedBody) Read(p []byte) (int, error) {
	n, err := b.rc.Read(p)
	b.left -= int64(n)
	if err == io.EOF && b.left > 0 {
		err = io.ErrUnexpectedEOF
	}
	return n, err
}

func (b *sizedBody) Close() error { return b.rc.Close() }

// List lists the directory at path, depth levels deep (0: the API's
// default of 1).
func (f Files) List(ctx context.Context, path string, depth int) ([]Entry, error) {
	body := wrennapi.ListDirJSONRequestBody{Path: path}
	if depth > 0 {
		body.Depth = &depth
	}
	r, err := f.s.c.api.ListDirWithResponse(ctx, f.s.Id, body)
	if err != nil {
		return nil, err
	}
	if r.JSON200 == nil {
		return nil, fmt.Errorf("wrenn: list %s: answer %d without a body", path, r.StatusCode())
	}
	return r.JSON200.Entries, nil
}

// MakeDir creates the directory at path with its parents.
func (f Files) MakeDir(ctx context.Context, path string) error {
	_, err := f.s.c.api.MakeDirWithResponse(ctx, f.s.Id, wrennapi.MakeDirJSONRequestBody{Path: path})
	return err
}

// Remove deletes the file or directory (recursively) at path.
func (f Files) Remove(ctx context.Context, path string) error {
	_, err := f.s.c.api.RemovePathWithResponse(ctx, f.s.Id, wrennapi.RemovePathJSONRequestBody{Path: path})
	return err
}
