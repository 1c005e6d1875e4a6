package wrenn

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/wrenn-dev/wrenn/sdk/go/wrenn/wrennapi"
)

// Sandbox is one sandbox: its last known record and the operations on it.
type Sandbox struct {
	wrennapi.Sandbox
	c *Client
}

// CreateOptions are a new sandbox's settings; zero values take the
// template's or the platform's defaults.
type CreateOptions struct {
	Template string
	VCPUs    int
	MemoryMB int
	// Timeout is the idle time before the sandbox is paused (0: the
	// default; use NoTimeout for never).
	Timeout  time.Duration
	Metadata map[string]string
	EnvVars  map[string]string
	// InternetAccess nil keeps the default.
	InternetAccess *bool
}

// NoTimeout as CreateOptions.Timeout keeps a sandbox running until destroyed.
const NoTimeout = time.Duration(-1)

// CreateSandbox boots a sandbox and returns it running. The request
// carries an Idempotency-Key, so a retry after a 502/503 creates only one.
func (c *Client) CreateSandbox(ctx context.Context, opts CreateOptions) (*Sandbox, error) {
	req := wrennapi.CreateSandboxRequest{InternetAccess: opts.InternetAccess}
	if opts.Template != "" {
		req.Template = &opts.Template
	}
	if opts.VCPUs != 0 {
		req.Vcpus = &opts.VCPUs
	}
	if opts.MemoryMB != 0 {
		req.MemoryMb = &opts.MemoryMB
	}
	switch {
	case opts.Timeout == NoTimeout:
		req.TimeoutSec = ptr(0)
	case opts.Timeout > 0:
		req.TimeoutSec = ptr(int(opts.Timeout.Round(time.Second) / time.Second))
	}
	if len(opts.Metadata) > 0 {
		req.Metadata = &opts.Metadata
	}
	if len(opts.EnvVars) > 0 {
		req.EnvVars = &opts.EnvVars
	}
	r, err := c.api.CreateSandboxWithResponse(ctx, &wrennapi.CreateSandboxParams{IdempotencyKey: idemKey()}, req)
	m, err := do(r, err, func() *wrennapi.Sandbox {
		if r.JSON201 != nil {
			return r.JSON201
		}
		return r.JSON202
	})
	return c.wrap(m, err)
}

// Sandbox is a handle on the sandbox id without fetching it (Refresh
// fetches it).
func (c *Client) Sandbox(id string) *Sandbox {
	return &Sandbox{Sandbox: wrennapi.Sandbox{Id: id}, c: c}
}

// GetSandbox fetches a sandbox of the caller's team.
func (c *Client) GetSandbox(ctx context.Context, id string) (*Sandbox, error) {
	r, err := c.api.GetSandboxWithResponse(ctx, id)
	return c.wrap(do(r, err, func() *wrennapi.Sandbox { return r.JSON200 }))
}

// ListOptions filter ListSandboxes.
type ListOptions struct {
	// Statuses, e.g. "running", "paused" (none: the API's default).
	Statuses []string
	Metadata map[string]string
}

// ListSandboxes lists the team's sandboxes, following every page.
func (c *Client) ListSandboxes(ctx context.Context, opts ListOptions) ([]*Sandbox, error) {
	params := &wrennapi.ListSandboxesParams{}
	if len(opts.Statuses) > 0 {
		params.Status = ptr(strings.Join(opts.Statuses, ","))
	}
	if len(opts.Metadata) > 0 {
		params.Metadata = &opts.Metadata
	}
	var out []*Sandbox
	for {
		r, err := c.api.ListSandboxesWithResponse(ctx, params)
		page, err := do(r, err, func() *wrennapi.SandboxPage { return r.JSON200 })
		if err != nil {
			return nil, err
		}
		for _, sb := range page.Sandboxes {
			out = append(out, &Sandbox{Sandbox: sb, c: c})
		}
		if page.NextCursor == nil || *page.NextCursor == "" {
			return out, nil
		}
		params.Cursor = page.NextCursor
	}
}

func (c *Client) wrap(m *wrennapi.Sandbox, err error) (*Sandbox, error) {
	if err != nil {
		return nil, err
	}
	return &Sandbox{Sandbox: *m, c: c}, nil
}

// update replaces the record with a newer one.
func (s *Sandbox) update(m *wrennapi.Sandbox, err error) error {
	if err != nil {
		return err
	}
	s.Sandbox = *m
	return nil
}

// Refresh fetches the sandbox's record again.
func (s *Sandbox) Refresh(ctx context.Context) error {
	r, err := s.c.api.GetSandboxWithResponse(ctx, s.Id)
	return s.update(do(r, err, func() *wrennapi.Sandbox { return r.JSON200 }))
}

// Pause snapshots the sandbox's memory and stops it (idempotent: retried safely).
func (s *Sandbox) Pause(ctx context.Context) error {
	r, err := s.c.api.PauseSandboxWithResponse(ctx, s.Id, &wrennapi.PauseSandboxParams{IdempotencyKey: idemKey()})
	return s.update(do(r, err, func() *wrennapi.Sandbox { return r.JSON200 }))
}

// Resume restores a paused sandbox; timeout > 0 sets a new idle timeout.
func (s *Sandbox) Resume(ctx context.Context, timeout time.Duration) error {
	body := wrennapi.ResumeSandboxJSONRequestBody{}
	if timeout > 0 {
		body.TimeoutSec = ptr(int(timeout / time.Second))
	}
	r, err := s.c.api.ResumeSandboxWithResponse(ctx, s.Id, &wrennapi.ResumeSandboxParams{IdempotencyKey: idemKey()}, body)
	return s.update(do(r, err, func() *wrennapi.Sandbox { return r.JSON200 }))
}

// Ping marks the sandbox active, postponing its idle pause.
func (s *Sandbox) Ping(ctx context.Context) (time.Time, error) {
	r, err := s.c.api.PingSandboxWithResponse(ctx, s.Id)
	res, err := do(r, err, func() *wrennapi.PingResult { return r.JSON200 })
	if err != nil {
		return time.Time{}, err
	}
	return res.LastActiveAt, nil
}

// Destroy stops the sandbox and deletes its disk.
func (s *Sandbox) Destroy(ctx context.Context) error {
	r, err := s.c.api.DestroySandboxWithResponse(ctx, s.Id)
	if err != nil {
		return err
	}
	if r.JSON202 != nil {
		s.Sandbox = *r.JSON202
	}
	return nil
}

// ExecOptions are a command's settings. Stdin (Exec only) is read whole
// before the command starts (the API takes it as UTF-8 text).
type ExecOptions struct {
	Args    []string
	Env     map[string]string
	Cwd     string
	User    string
	Timeout time.Duration
	Stdin   io.Reader
	// Stdout and Stderr receive ExecStream's output as it comes (nil:
	// discarded).
	Stdout, Stderr io.Writer
}

// ExecResult is a finished command's outcome.
type ExecResult = wrennapi.ExecResult

// Exec runs a command to completion and returns its output (capped by the
// API; see Truncated) and exit code. A non-zero exit is not an error.
func (s *Sandbox) Exec(ctx context.Context, cmd string, opts ExecOptions) (*ExecResult, error) {
	req := wrennapi.ExecRequest{Cmd: cmd}
	if len(opts.Args) > 0 {
		req.Args = &opts.Args
	}
	if len(opts.Env) > 0 {
		req.Env = &opts.Env
	}
	if opts.Cwd != "" {
		req.Cwd = &opts.Cwd
	}
	if opts.User != "" {
		req.User = &opts.User
	}
	if opts.Timeout > 0 {
		req.TimeoutSec = ptr(int(opts.Timeout.Round(time.Second) / time.Second))
	}
	stdin, err := readStdin(opts.Stdin)
	if err != nil {
		return nil, err
	}
	if stdin != "" {
		req.Stdin = &stdin
	}
	r, err := s.c.api.ExecWithResponse(ctx, s.Id, req)
	body, err := do(r, err, func() *wrennapi.Exec200JSONResponseBody { return r.JSON200 })
	if err != nil {
		return nil, err
	}
	res, err := body.AsExecResult()
	if err != nil {
		return nil, fmt.Errorf("wrenn: decode the exec result: %w", err)
	}
	return &res, nil
}

// maxStdin is the most stdin Exec sends (the API's body limit
// is of the same order).
const maxStdin = 32 << 10

func readStdin(r io.Reader) (string, error) {
	if r == nil {
		return "", nil
	}
	b, err := io.ReadAll(io.LimitReader(r, maxStdin+1))
	if err != nil {
		return "", fmt.Errorf("wrenn: read stdin: %w", err)
	}
	if len(b) > maxStdin {
		return "", fmt.Errorf("wrenn: stdin is larger than %d bytes; write a file instead (Files().Write)", maxStdin)
	}
	if !utf8.Valid(b) {
		return "", errors.New("wrenn: stdin must be UTF-8 text; write binary input to a file instead")
	}
	return string(b), nil
}

// Process is a process started in the background (ExecRequest.Background
// through API()) or a terminal.
type Process = wrennapi.Process

// Processes lists the sandbox's background processes and terminals.
func (s *Sandbox) Processes(ctx context.Context) ([]Process, error) {
	r, err := s.c.api.ListProcessesWithResponse(ctx, s.Id)
	body, err := do(r, err, func() *struct {
		Processes []Process `json:"processes"`
	} {
		return r.JSON200
	})
	if err != nil {
		return nil, err
	}
	return body.Processes, nil
}

// Kill signals a process by pid or tag ("" signal: SIGKILL).
func (s *Sandbox) Kill(ctx context.Context, process, signal string) error {
	params := &wrennapi.KillProcessParams{}
	if signal != "" {
		params.Signal = ptr(wrennapi.KillProcessParamsSignal(signal))
	}
	_, err := s.c.api.KillProcessWithResponse(ctx, s.Id, process, params)
	return err
}

// Metrics is the sandbox's latest resource sample and recent history.
func (s *Sandbox) Metrics(ctx context.Context) (*wrennapi.Metrics, error) {
	r, err := s.c.api.SandboxMetricsWithResponse(ctx, s.Id, &wrennapi.SandboxMetricsParams{})
	body, err := do(r, err, func() *wrennapi.SandboxMetrics200JSONResponseBody { return r.JSON200 })
	if err != nil {
		return nil, err
	}
	m, err := body.AsMetrics()
	if err != nil {
		return nil, fmt.Errorf("wrenn: decode the metrics: %w", err)
	}
	return &m, nil
}
