package wrenn

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"mime/multipart"
	"strings"

	"github.com/wrenn-dev/wrenn/sdk/go/wrenn/wrennapi"
)

// Session is a signed-in user's token and team.
type Session = wrennapi.Session

// Login signs in with email and password. The returned token is a
// session: make a client with Config.Token set to it.
func (c *Client) Login(ctx context.Context, email, password string) (*Session, error) {
	r, err := c.api.LoginWithResponse(ctx, &wrennapi.LoginParams{}, wrennapi.LoginJSONRequestBody{Email: email, Password: password})
	body, err := do(r, err, func() *wrennapi.Login200JSONResponseBody { return r.JSON200 })
	if err != nil {
		return nil, err
	}
	s, err := body.AsSession()
	if err != nil || s.Token == "" {
		return nil, fmt.Errorf("wrenn: the login answer carries no token")
	}
	return &s, nil
}

// Me is the caller's user and teams (sessions only).
func (c *Client) Me(ctx context.Context) (*wrennapi.Me, error) {
	r, err := c.api.GetMeWithResponse(ctx)
	return do(r, err, func() *wrennapi.Me { return r.JSON200 })
}

// Snapshot is a saved sandbox that new sandboxes start from.
type Snapshot = wrennapi.Snapshot

// CreateSnapshot saves a sandbox under name (a template new sandboxes can
// start from). Idempotent: retried safely.
func (c *Client) CreateSnapshot(ctx context.Context, sandboxID, name string) (*Snapshot, error) {
	r, err := c.api.CreateSnapshotWithResponse(ctx, &wrennapi.CreateSnapshotParams{IdempotencyKey: idemKey()},
		wrennapi.CreateSnapshotJSONRequestBody{SandboxId: sandboxID, Name: name})
	return do(r, err, func() *Snapshot { return r.JSON201 })
}

// ListSnapshots lists the team's snapshots.
func (c *Client) ListSnapshots(ctx context.Context) ([]Snapshot, error) {
	r, err := c.api.ListSnapshotsWithResponse(ctx)
	if err != nil {
		return nil, err
	}
	return r.JSON200.Snapshots, nil
}

// DeleteSnapshot deletes the team's snapshot name.
func (c *Client) DeleteSnapshot(ctx context.Context, name string) error {
	_, err := c.api.DeleteSnapshotWithResponse(ctx, name)
	return err
}

// Template is what sandboxes start from.
type Template = wrennapi.Template

// ListTemplates lists the templates the caller may start sandboxes from.
func (c *Client) ListTemplates(ctx context.Context) ([]Template, error) {
	r, err := c.api.ListTemplatesWithResponse(ctx)
	if err != nil {
		return nil, err
	}
	return r.JSON200.Templates, nil
}

// Build is a template build and its steps.
type Build = wrennapi.Build

// BuildRequest is a template build's recipe and settings.
type BuildRequest = wrennapi.BuildRequest

// SubmitBuild queues a template build (platform admins, sessions only).
// archive, when not nil, is a tar, tar.gz or zip whose files COPY steps
// read; it is streamed.
func (c *Client) SubmitBuild(ctx context.Context, req BuildRequest, archive io.Reader) (*Build, error) {
	if archive == nil {
		r, err := c.api.SubmitBuildWithResponse(ctx, req)
		return do(r, err, func() *Build { return r.JSON202 })
	}
	config, err := json.Marshal(req)
	if err != nil {
		return nil, fmt.Errorf("wrenn: encode the build request: %w", err)
	}
	pr, pw := io.Pipe()
	mw := multipart.NewWriter(pw)
	go func() {
		part, err := mw.CreateFormField("config")
		if err == nil {
			if _, err = part.Write(config); err == nil {
				if part, err = mw.CreateFormFile("archive", "archive"); err == nil {
					if _, err = io.Copy(part, archive); err == nil {
						err = mw.Close()
					}
				}
			}
		}
		pw.CloseWithError(err)
	}()
	r, err := c.api.SubmitBuildWithBodyWithResponse(ctx, mw.FormDataContentType(), pr)
	pr.Close()
	return do(r, err, func() *Build { return r.JSON202 })
}

// GetBuild fetches a build with its steps.
func (c *Client) GetBuild(ctx context.Context, id string) (*Build, error) {
	r, err := c.api.GetBuildWithResponse(ctx, id)
	return do(r, err, func() *Build { return r.JSON200 })
}

// ListBuilds lists the latest builds (first page).
func (c *Client) ListBuilds(ctx context.Context) ([]Build, error) {
	r, err := c.api.ListBuildsWithResponse(ctx, &wrennapi.ListBuildsParams{})
	if err != nil {
		return nil, err
	}
	return r.JSON200.Builds, nil
}

// CancelBuild asks a queued or running build to stop.
func (c *Client) CancelBuild(ctx context.Context, id string) (*Build, error) {
	r, err := c.api.CancelBuildWithResponse(ctx, id)
	return do(r, err, func() *Build { return r.JSON202 })
}

// BuildEvent is one event of a build's live log: "build" (the build as
// recorded so far, in Build), "step" (a step changed status, in Step),
// "output" (a chunk of step Index's Stream), "end" (the build ended with
// Status).
type BuildEvent struct {
	Type   string              `json:"type"`
	Index  int                 `json:"index"`
	Stream string              `json:"stream,omitempty"`
	Data   string              `json:"data,omitempty"`
	Step   *wrennapi.BuildStep `json:"step,omitempty"`
	Status string              `json:"status,omitempty"`
	Build  *Build              `json:"-"`
}

// FollowBuild streams a build's live log to fn until the build ends (the
// "end" event), fn returns an error, or ctx ends.
func (c *Client) FollowBuild(ctx context.Context, id string, fn func(BuildEvent) error) error {
	resp, err := c.api.BuildLogs(ctx, id)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/event-stream") {
		return fmt.Errorf("wrenn: the build log answered %q, not an event stream", ct)
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	var name string
	var data bytes.Buffer
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "event:"):
			name = strings.TrimSpace(strings.TrimPrefix(line, "event:"))
		case strings.HasPrefix(line, "data:"):
			data.WriteString(strings.TrimPrefix(strings.TrimPrefix(line, "data:"), " "))
		case line == "" && name != "":
			ev, err := decodeBuildEvent(name, data.Bytes())
			if err != nil {
				return err
			}
			if err := fn(ev); err != nil {
				return err
			}
			if ev.Type == "end" {
				return nil
			}
			name = ""
			data.Reset()
		}
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("%w: build log: %v", ErrConnectionLost, ctxErr(ctx, err))
	}
	return fmt.Errorf("%w: the build log ended before the build", ErrConnectionLost)
}

func decodeBuildEvent(name string, data []byte) (BuildEvent, error) {
	if name == "build" {
		var b Build
		if err := json.Unmarshal(data, &b); err != nil {
			return BuildEvent{}, fmt.Errorf("wrenn: decode the build event: %w", err)
		}
		return BuildEvent{Type: "build", Build: &b}, nil
	}
	var ev BuildEvent
	if err := json.Unmarshal(data, &ev); err != nil {
		return BuildEvent{}, fmt.Errorf("wrenn: decode the %s event: %w", name, err)
	}
	ev.Type = name
	return ev, nil
}

// APIKey is an API key as listed (never the key itself).
type APIKey = wrennapi.APIKey

// NewAPIKey is a created key: Key is shown only here.
type NewAPIKey = wrennapi.NewAPIKey

// CreateAPIKey creates a team API key (sessions only).
func (c *Client) CreateAPIKey(ctx context.Context, name string) (*NewAPIKey, error) {
	r, err := c.api.CreateAPIKeyWithResponse(ctx, wrennapi.CreateAPIKeyJSONRequestBody{Name: name})
	return do(r, err, func() *NewAPIKey { return r.JSON201 })
}

// ListAPIKeys lists the team's API keys.
func (c *Client) ListAPIKeys(ctx context.Context) ([]APIKey, error) {
	r, err := c.api.ListAPIKeysWithResponse(ctx)
	if err != nil {
		return nil, err
	}
	return r.JSON200.ApiKeys, nil
}

// RevokeAPIKey deletes the API key id; it stops working at once.
func (c *Client) RevokeAPIKey(ctx context.Context, id string) error {
	_, err := c.api.DeleteAPIKeyWithResponse(ctx, id)
	return err
}

// AuditLogPage is a page of the team's audit log.
type AuditLogPage = wrennapi.AuditLogPage

// ListAuditLogs reads the audit log, newest first (params may be nil).
func (c *Client) ListAuditLogs(ctx context.Context, params *wrennapi.ListAuditLogsParams) (*AuditLogPage, error) {
	if params == nil {
		params = &wrennapi.ListAuditLogsParams{}
	}
	r, err := c.api.ListAuditLogsWithResponse(ctx, params)
	return do(r, err, func() *AuditLogPage { return r.JSON200 })
}

// DeleteTemplate deletes a built template (platform admins); one in use by
// a sandbox is refused (409 template_in_use).
func (c *Client) DeleteTemplate(ctx context.Context, name string) error {
	_, err := c.api.DeleteTemplateWithResponse(ctx, name)
	return err
}
