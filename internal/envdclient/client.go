// Package envdclient talks to one envd (the guest agent inside a sandbox):
// its Connect process and filesystem services and its plain HTTP endpoints
// (/health, /init, /files, /metrics). Every request carries the sandbox's
// access token once it is set.
package envdclient

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"net"
	"net/http"
	"net/textproto"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"connectrpc.com/connect"

	"github.com/wrenn-dev/wrenn/internal/agent/agenterr"
	"github.com/wrenn-dev/wrenn/internal/envdwire"
	"github.com/wrenn-dev/wrenn/proto/envd/filesystem/filesystemconnect"
	"github.com/wrenn-dev/wrenn/proto/envd/process/processconnect"
)

// TokenHeader carries the access token set by /init.
const TokenHeader = "X-Access-Token"

// ErrNotFound matches an answer of envd that says the path (or process)
// does not exist.
var ErrNotFound = agenterr.ErrNotFound

// HTTPError is a non-2xx answer from one of envd's HTTP endpoints. It
// matches (errors.Is) the domain error its status means (see Classify).
type HTTPError struct {
	Op      string
	Status  int
	Message string
}

func (e *HTTPError) Error() string {
	return fmt.Sprintf("envd %s: HTTP %d: %s", e.Op, e.Status, e.Message)
}

// Is matches the domain error of the status.
func (e *HTTPError) Is(target error) bool {
	k := statusKind(e.Status)
	return k != nil && target == k
}

// statusKind is what a status of envd's /files and /init means.
func statusKind(status int) error {
	switch status {
	case http.StatusBadRequest:
		return agenterr.ErrInvalidArgument
	case http.StatusUnauthorized, http.StatusForbidden:
		return agenterr.ErrPermissionDenied
	case http.StatusNotFound:
		return agenterr.ErrNotFound
	case http.StatusInsufficientStorage:
		return agenterr.ErrDiskFull
	}
	return nil
}

// connectKind is what a Connect code of envd's process and filesystem
// services means. A code envd did not send (the transport failed) reads as
// Unavailable too.
func connectKind(code connect.Code) error {
	switch code {
	case connect.CodeNotFound:
		return agenterr.ErrNotFound
	case connect.CodeInvalidArgument:
		return agenterr.ErrInvalidArgument
	case connect.CodeFailedPrecondition, connect.CodeAlreadyExists:
		return agenterr.ErrInvalidState
	case connect.CodePermissionDenied:
		return agenterr.ErrPermissionDenied
	case connect.CodeUnavailable, connect.CodeDeadlineExceeded, connect.CodeCanceled:
		return agenterr.ErrUnavailable
	}
	return nil
}

// classified is an envd error with the domain error it means.
type classified struct{ kind, err error }

func (c classified) Error() string        { return c.err.Error() }
func (c classified) Is(target error) bool { return target == c.kind }
func (c classified) Unwrap() error        { return c.err }

// Classify reads an error of a call to envd into the agent's domain errors
// (agenterr), once, here: an HTTP status of /files or /init, a Connect code
// of envd's services, or a failure to reach envd at all (Unavailable).
// What envd calls an internal failure stays unclassified.
func Classify(err error) error {
	if err == nil {
		return nil
	}
	var he *HTTPError
	if errors.As(err, &he) {
		return err // classified by its status
	}
	var kind error
	var ce *connect.Error
	if errors.As(err, &ce) {
		kind = connectKind(ce.Code())
		if ce.Meta().Get(envdwire.ErrorReasonHeader) == envdwire.ReasonDiskFull {
			kind = agenterr.ErrDiskFull
		}
	} else {
		kind = agenterr.ErrUnavailable
	}
	if kind == nil {
		return err
	}
	return classified{kind: kind, err: err}
}

// Client is a client for one envd. It is safe for concurrent use.
type Client struct {
	base string
	http *http.Client

	mu    sync.RWMutex
	token string

	conns *connSet

	Process    processconnect.ProcessClient
	Filesystem filesystemconnect.FilesystemClient
}

// New returns a client for the envd at addr ("host:port").
func New(addr string) *Client {
	c := &Client{base: "http://" + addr, conns: &connSet{live: map[*trackedConn]struct{}{}}}
	d := &net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}
	tr := &http.Transport{
		DialContext:         c.conns.dialer(d),
		MaxIdleConnsPerHost: 16,
		IdleConnTimeout:     60 * time.Second,
		// Many processes stream at once; HTTP/1.1 gives each its own
		// connection, so one slow stream never blocks the others.
		DisableCompression: true,
	}
	c.http = &http.Client{Transport: &tokenTransport{c: c, next: tr}}
	c.Process = processconnect.NewProcessClient(c.http, c.base)
	c.Filesystem = filesystemconnect.NewFilesystemClient(c.http, c.base)
	return c
}

// Addr is the base URL of the envd.
func (c *Client) Addr() string { return c.base }

// SetToken sets the access token sent with every request.
func (c *Client) SetToken(tok string) {
	c.mu.Lock()
	c.token = tok
	c.mu.Unlock()
}

// Token returns the current access token.
func (c *Client) Token() string {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.token
}

// Close ends every connection, idle or in use, and refuses new ones: the
// VM behind the client is going away, and a call in flight must fail now
// rather than wait on a guest that will never answer.
func (c *Client) Close() {
	c.conns.close()
	c.http.CloseIdleConnections()
}

// connSet tracks a client's connections so Close can end them.
type connSet struct {
	mu     sync.Mutex
	live   map[*trackedConn]struct{}
	closed bool
}

func (s *connSet) dialer(d *net.Dialer) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		conn, err := d.DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		tc := &trackedConn{Conn: conn, set: s}
		s.mu.Lock()
		defer s.mu.Unlock()
		if s.closed {
			conn.Close()
			return nil, fmt.Errorf("dial %s: %w", addr, net.ErrClosed)
		}
		s.live[tc] = struct{}{}
		return tc, nil
	}
}

func (s *connSet) close() {
	s.mu.Lock()
	s.closed = true
	live := s.live
	s.live = map[*trackedConn]struct{}{}
	s.mu.Unlock()
	for tc := range live {
		tc.Conn.Close()
	}
}

type trackedConn struct {
	net.Conn
	set *connSet
}

func (tc *trackedConn) Close() error {
	tc.set.mu.Lock()
	delete(tc.set.live, tc)
	tc.set.mu.Unlock()
	return tc.Conn.Close()
}

// tokenTransport adds the access token to every request, Connect or plain.
type tokenTransport struct {
	c    *Client
	next http.RoundTripper
}

func (t *tokenTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	if tok := t.c.Token(); tok != "" && r.Header.Get(TokenHeader) == "" {
		r = r.Clone(r.Context())
		r.Header.Set(TokenHeader, tok)
	}
	return t.next.RoundTrip(r)
}

// WithUser sets the user a Connect request runs as (envd reads it from a
// Basic authorization header, as E2B's SDKs send it).
func WithUser(h http.Header, user string) {
	if user != "" {
		h.Set("Authorization", "Basic "+base64.StdEncoding.EncodeToString([]byte(user+":")))
	}
}

// NewRequest builds a Connect request running as user.
func NewRequest[T any](msg *T, user string) *connect.Request[T] {
	r := connect.NewRequest(msg)
	WithUser(r.Header(), user)
	return r
}

// Health does one GET /health.
func (c *Client) Health(ctx context.Context) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.base+"/health", nil)
	if err != nil {
		return fmt.Errorf("envd health: %w", err)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("envd health: %w", err)
	}
	defer drain(resp.Body)
	if resp.StatusCode/100 != 2 {
		return readHTTPError("health", resp)
	}
	return nil
}

// WaitHealthy polls /health every interval (20 ms when zero) until it
// answers or ctx ends; it returns the last error with ctx's.
func (c *Client) WaitHealthy(ctx context.Context, interval time.Duration) error {
	if interval <= 0 {
		interval = 20 * time.Millisecond
	}
	var last error
	for {
		// A short per-try deadline: a SYN into a guest that is not up yet
		// must not eat the whole budget.
		tctx, cancel := context.WithTimeout(ctx, time.Second)
		last = c.Health(tctx)
		cancel()
		if last == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("envd at %s not healthy: %w (last: %v)", c.base, ctx.Err(), last)
		case <-time.After(interval):
		}
	}
}

// InitRequest is the body of POST /init.
type InitRequest struct {
	EnvVars        map[string]string `json:"envVars,omitempty"`
	AccessToken    *string           `json:"accessToken,omitempty"`
	Timestamp      *time.Time        `json:"timestamp,omitempty"`
	DefaultUser    string            `json:"defaultUser,omitempty"`
	DefaultWorkdir string            `json:"defaultWorkdir,omitempty"`
}

// Init posts /init. When it sets an access token the client uses it from
// then on.
func (c *Client) Init(ctx context.Context, in InitRequest) error {
	body, err := json.Marshal(in)
	if err != nil {
		return fmt.Errorf("envd init: encode: %w", err)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.base+"/init", strings.NewReader(string(body)))
	if err != nil {
		return fmt.Errorf("envd init: %w", err)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("envd init: %w", err)
	}
	defer drain(resp.Body)
	if resp.StatusCode/100 != 2 {
		return readHTTPError("init", resp)
	}
	if in.AccessToken != nil {
		c.SetToken(*in.AccessToken)
	}
	return nil
}

// Metrics is the body of GET /metrics.
type Metrics struct {
	TS         int64   `json:"ts"`
	CPUCount   int     `json:"cpu_count"`
	CPUUsedPct float64 `json:"cpu_used_pct"`
	MemTotal   uint64  `json:"mem_total"`
	MemUsed    uint64  `json:"mem_used"`
	DiskUsed   uint64  `json:"disk_used"`
	DiskTotal  uint64  `json:"disk_total"`
}

// Metrics reads GET /metrics.
func (c *Client) Metrics(ctx context.Context) (Metrics, error) {
	var m Metrics
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.base+"/metrics", nil)
	if err != nil {
		return m, fmt.Errorf("envd metrics: %w", err)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return m, fmt.Errorf("envd metrics: %w", err)
	}
	defer drain(resp.Body)
	if resp.StatusCode/100 != 2 {
		return m, readHTTPError("metrics", resp)
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&m); err != nil {
		return m, fmt.Errorf("envd metrics: decode: %w", err)
	}
	return m, nil
}

func (c *Client) filesURL(path, user string) string {
	q := url.Values{}
	q.Set("path", path)
	if user != "" {
		q.Set("username", user)
	}
	return c.base + "/files?" + q.Encode()
}

// UploadFile streams r to path in the guest as a multipart "file" field;
// nothing is buffered whole. It returns the bytes sent. When reading r
// fails the request is aborted before the multipart body is complete, so
// envd discards what it received and path keeps its old content.
func (c *Client) UploadFile(ctx context.Context, path, user string, r io.Reader) (int64, error) {
	if path == "" {
		return 0, errors.New("envd upload: empty path")
	}
	ctx, abort := context.WithCancel(ctx)
	defer abort()
	src := &abortingReader{r: r, abort: abort}
	pr, pw := io.Pipe()
	mw := multipart.NewWriter(pw)
	var n int64
	go func() {
		part, err := mw.CreatePart(filePartHeader(path))
		if err == nil {
			n, err = io.Copy(part, src)
		}
		if err == nil {
			err = mw.Close()
		}
		pw.CloseWithError(err)
	}()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.filesURL(path, user), pr)
	if err != nil {
		pr.CloseWithError(err)
		return 0, fmt.Errorf("envd upload %s: %w", path, err)
	}
	req.Header.Set("Content-Type", mw.FormDataContentType())
	resp, err := c.http.Do(req)
	// Unblock the writer goroutine whatever happened.
	pr.CloseWithError(errors.New("upload request finished"))
	if rerr := src.failure(); rerr != nil {
		if err == nil {
			drain(resp.Body)
		}
		return 0, fmt.Errorf("envd upload %s: read the upload: %w", path, rerr)
	}
	if err != nil {
		return 0, fmt.Errorf("envd upload %s: %w", path, err)
	}
	defer drain(resp.Body)
	if resp.StatusCode/100 != 2 {
		return 0, readHTTPError("upload "+path, resp)
	}
	return n, nil
}

// abortingReader cancels the upload request at the first read error of the
// source, so the body sent to envd never ends as if it were complete.
type abortingReader struct {
	r     io.Reader
	abort context.CancelFunc

	mu  sync.Mutex
	err error
}

func (a *abortingReader) Read(p []byte) (int, error) {
	n, err := a.r.Read(p)
	if err != nil && !errors.Is(err, io.EOF) {
		a.mu.Lock()
		a.err = err
		a.mu.Unlock()
		a.abort()
	}
	return n, err
}

// failure is the source's read error, if any.
func (a *abortingReader) failure() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.err
}

// filePartHeader names the uploaded file in its part header. The path goes
// in the query; the name is informative, and mime.FormatMediaType encodes it
// (RFC 2231 / RFC 7578 percent-encoding) when it holds characters such as
// newlines that cannot appear raw in a header.
func filePartHeader(path string) textproto.MIMEHeader {
	h := make(textproto.MIMEHeader)
	h.Set("Content-Disposition", mime.FormatMediaType("form-data", map[string]string{"name": "file", "filename": baseName(path)}))
	h.Set("Content-Type", "application/octet-stream")
	return h
}

// DownloadFile opens path in the guest for reading; size is -1 when envd
// did not say. The caller closes the reader.
func (c *Client) DownloadFile(ctx context.Context, path, user string) (rc io.ReadCloser, size int64, err error) {
	if path == "" {
		return nil, 0, errors.New("envd download: empty path")
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.filesURL(path, user), nil)
	if err != nil {
		return nil, 0, fmt.Errorf("envd download %s: %w", path, err)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, 0, fmt.Errorf("envd download %s: %w", path, err)
	}
	if resp.StatusCode/100 != 2 {
		defer drain(resp.Body)
		return nil, 0, readHTTPError("download "+path, resp)
	}
	size = -1
	if v := resp.Header.Get("Content-Length"); v != "" {
		if n, err := strconv.ParseInt(v, 10, 64); err == nil {
			size = n
		}
	}
	return resp.Body, size, nil
}

func baseName(p string) string {
	if i := strings.LastIndexByte(p, '/'); i >= 0 && i < len(p)-1 {
		return p[i+1:]
	}
	return "file"
}

func readHTTPError(op string, resp *http.Response) error {
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	msg := strings.TrimSpace(string(b))
	var e struct {
		Message string `json:"message"`
	}
	if json.Unmarshal(b, &e) == nil && e.Message != "" {
		msg = e.Message
	}
	return &HTTPError{Op: op, Status: resp.StatusCode, Message: msg}
}

func drain(r io.ReadCloser) {
	io.Copy(io.Discard, io.LimitReader(r, 64<<10))
	r.Close()
}
