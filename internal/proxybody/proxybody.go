// Package proxybody holds the request body wrapper both halves of the
// sandbox HTTP proxy put around the body they forward.
package proxybody

import "io"

// Body ends a request body with io.EOF itself once its Content-Length has
// been read, without another read of the server's body. The transport
// reads once more after the last byte to check the length; by then the
// upstream may have answered and the server, having sent the response
// headers, closed the inbound body: that read failed ("invalid Read on
// closed Body") and the transport tore down the connection mid-response.
// OnRead, when set, runs after each read that returned bytes (activity).
type Body struct {
	rc     io.ReadCloser
	left   int64 // -1: unknown length
	onRead func()
}

// New wraps rc of length n (-1 when unknown).
func New(rc io.ReadCloser, n int64, onRead func()) *Body {
	return &Body{rc: rc, left: n, onRead: onRead}
}

func (b *Body) Read(p []byte) (int, error) {
	if b.left == 0 {
		return 0, io.EOF
	}
	if b.left > 0 && int64(len(p)) > b.left {
		p = p[:b.left]
	}
	n, err := b.rc.Read(p)
	if b.left > 0 {
		b.left -= int64(n)
		if b.left == 0 && err == nil {
			err = io.EOF
		}
	}
	if n > 0 && b.onRead != nil {
		b.onRead()
	}
	return n, err
}

// Close closes the wrapped body.
func (b *Body) Close() error { return b.rc.Close() }
