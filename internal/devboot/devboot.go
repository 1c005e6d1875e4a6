// Package devboot prepares a fresh `wrenn dev` platform through its public
// REST API, as a user would: the first admin and team (signup), an API key,
// and a shared host with a one-time registration token for the local agent.
// What it creates is kept in a 0600 state file so later runs reuse it.
package devboot

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"time"

	"github.com/wrenn-dev/wrenn/internal/agent/registration"
	"github.com/wrenn-dev/wrenn/internal/atomicfile"
)

// AdminEmail is the login of the admin `wrenn dev` creates.
const AdminEmail = "admin@wrenn.local"

// Options say where the platform is and where state lives.
type Options struct {
	// BaseURL of the control plane, e.g. http://localhost:8000.
	BaseURL string
	// StatePath is the JSON file with the credentials made earlier.
	StatePath string
	// AgentDir is the agent's WRENN_DIR (its saved host credentials).
	AgentDir string
	// NoAgent skips the host.
	NoAgent bool
	// Client defaults to a client with a 30 s timeout.
	Client *http.Client
}

// state is what the state file keeps between runs.
type state struct {
	Email    string `json:"email"`
	Password string `json:"password"`
	APIKey   string `json:"api_key"`
	HostID   string `json:"host_id,omitempty"`
}

// Result is what a run of dev needs and prints.
type Result struct {
	Email    string
	Password string
	APIKey   string
	HostID   string
	// HostToken is a fresh registration token for HostID: the agent
	// registers with it on every start (its address may have changed).
	HostToken string

	session string
	base    string
	client  *http.Client
}

// Bootstrap creates what is missing and returns the credentials.
func Bootstrap(ctx context.Context, o Options) (Result, error) {
	c := o.Client
	if c == nil {
		c = &http.Client{Timeout: 30 * time.Second}
	}
	st, err := loadState(o.StatePath)
	if err != nil {
		return Result{}, err
	}
	r := Result{base: o.BaseURL, client: c}

	if st.Email == "" {
		st.Email, st.Password = AdminEmail, randomHex(12)
		var sess struct {
			Token string `json:"token"`
		}
		status, err := r.call(ctx, http.MethodPost, "/v1/auth/signup", "", map[string]string{"email": st.Email, "password": st.Password, "name": "Admin"}, &sess)
		if err != nil {
			return Result{}, err
		}
		if status == http.StatusConflict {
			return Result{}, fmt.Errorf("an account %s already exists but %s was lost: remove the dev data dir to start afresh", st.Email, o.StatePath)
		}
		if status != http.StatusCreated && status != http.StatusOK {
			return Result{}, fmt.Errorf("signup answered %d", status)
		}
		r.session = sess.Token
		// Saved at once: the account exists now, whatever fails next.
		if err := saveState(o.StatePath, st); err != nil {
			return Result{}, err
		}
	} else if err := r.login(ctx, st); err != nil {
		return Result{}, err
	}
	r.Email, r.Password = st.Email, st.Password

	if st.APIKey == "" || !r.apiKeyWorks(ctx, st.APIKey) {
		var key struct {
			Key string `json:"key"`
		}
		status, err := r.call(ctx, http.MethodPost, "/v1/api-keys", r.session, map[string]string{"name": "wrenn dev"}, &key)
		if err != nil {
			return Result{}, err
		}
		if status != http.StatusCreated && status != http.StatusOK || key.Key == "" {
			return Result{}, fmt.Errorf("create API key answered %d", status)
		}
		st.APIKey = key.Key
	}
	r.APIKey = st.APIKey

	if !o.NoAgent {
		if err := r.ensureHost(ctx, &st, o); err != nil {
			return Result{}, err
		}
	}
	if err := saveState(o.StatePath, st); err != nil {
		return Result{}, err
	}
	return r, nil
}

// ensureHost keeps the platform's host (with a fresh token, so the agent
// registers its current address) when the agent's saved registration
// belongs to it, and otherwise makes a new shared host and token.
func (r *Result) ensureHost(ctx context.Context, st *state, o Options) error {
	creds, err := registration.Load(o.AgentDir)
	if err == nil && st.HostID != "" && creds.HostID == st.HostID && creds.CPURL == o.BaseURL {
		status, err := r.call(ctx, http.MethodGet, "/v1/hosts/"+st.HostID, r.session, nil, nil)
		if err != nil {
			return err
		}
		if status == http.StatusOK {
			// dev's agent listens on a new free port each run, and only a
			// registration records an agent's address: a fresh token makes
			// the agent register again (same host, same sandboxes), so the
			// control plane dials the port it listens on now.
			var regen struct {
				Token string `json:"registration_token"`
			}
			status, err := r.call(ctx, http.MethodPost, "/v1/hosts/"+st.HostID+"/token", r.session, nil, &regen)
			if err != nil {
				return err
			}
			if status != http.StatusOK || regen.Token == "" {
				return fmt.Errorf("regenerate the host's registration token answered %d", status)
			}
			r.HostID, r.HostToken = st.HostID, regen.Token
			return nil
		}
	}
	// Saved credentials of another platform (or a deleted host) would make
	// the agent fail to authenticate: start its registration afresh.
	if err := os.Remove(registration.CredentialsPath(o.AgentDir)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove stale agent credentials: %w", err)
	}
	if st.HostID != "" {
		if _, err := r.call(ctx, http.MethodDelete, "/v1/hosts/"+st.HostID+"?force=true", r.session, nil, nil); err != nil {
			return err
		}
	}
	name, _ := os.Hostname()
	var created struct {
		Host struct {
			ID string `json:"id"`
		} `json:"host"`
		Token string `json:"registration_token"`
	}
	status, err := r.call(ctx, http.MethodPost, "/v1/hosts", r.session, map[string]any{"name": "dev " + name, "shared": true}, &created)
	if err != nil {
		return err
	}
	if status != http.StatusCreated && status != http.StatusOK || created.Token == "" {
		return fmt.Errorf("create host answered %d", status)
	}
	st.HostID, r.HostID, r.HostToken = created.Host.ID, created.Host.ID, created.Token
	return nil
}

// HostState is what the API shows of the dev host.
type HostState struct {
	Status          string     `json:"status"`
	Address         string     `json:"address"`
	LastHeartbeatAt *time.Time `json:"last_heartbeat_at"`
}

// Host reads the dev host through the API.
func (r Result) Host(ctx context.Context) (HostState, error) {
	var h HostState
	status, err := r.call(ctx, http.MethodGet, "/v1/hosts/"+r.HostID, r.session, nil, &h)
	if err != nil {
		return HostState{}, err
	}
	if status != http.StatusOK {
		return HostState{}, fmt.Errorf("GET /v1/hosts/%s answered %d", r.HostID, status)
	}
	return h, nil
}

// HeardFrom reports whether the host is online by a heartbeat (or
// registration) of the agent listening at address, newer than before, the
// host's state read before that agent started. What a previous run left in
// the database does not count: its agent had another address, and its last
// heartbeat is before's. (Comparing heartbeats with each other, not with
// this machine's clock, holds with a database on another machine.)
func (h HostState) HeardFrom(address string, before HostState) bool {
	return h.Status == "online" && h.Address == address && h.LastHeartbeatAt != nil &&
		(before.LastHeartbeatAt == nil || h.LastHeartbeatAt.After(*before.LastHeartbeatAt))
}

func (r *Result) login(ctx context.Context, st state) error {
	var sess struct {
		Token string `json:"token"`
	}
	status, err := r.call(ctx, http.MethodPost, "/v1/auth/login", "", map[string]string{"email": st.Email, "password": st.Password}, &sess)
	if err != nil {
		return err
	}
	if status != http.StatusOK {
		return fmt.Errorf("login as %s answered %d: remove the dev data dir to start afresh", st.Email, status)
	}
	r.session = sess.Token
	return nil
}

func (r *Result) apiKeyWorks(ctx context.Context, key string) bool {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, r.base+"/v1/sandboxes?limit=1", nil)
	if err != nil {
		return false
	}
	req.Header.Set("X-API-Key", key)
	resp, err := r.client.Do(req)
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

// call sends a JSON request and decodes a 2xx JSON answer into out.
func (r *Result) call(ctx context.Context, method, path, session string, body, out any) (int, error) {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return 0, err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, r.base+path, rd)
	if err != nil {
		return 0, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if session != "" {
		req.Header.Set("Authorization", "Bearer "+session)
	}
	resp, err := r.client.Do(req)
	if err != nil {
		return 0, fmt.Errorf("%s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	if out != nil && resp.StatusCode >= 200 && resp.StatusCode < 300 {
		if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
			return resp.StatusCode, fmt.Errorf("%s %s: decode answer: %w", method, path, err)
		}
	}
	return resp.StatusCode, nil
}

func loadState(path string) (state, error) {
	var st state
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return st, nil
	}
	if err != nil {
		return st, fmt.Errorf("read %s: %w", path, err)
	}
	if err := json.Unmarshal(b, &st); err != nil {
		return st, fmt.Errorf("%s is corrupt (remove it to start afresh): %w", path, err)
	}
	return st, nil
}

func saveState(path string, st state) error {
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return err
	}
	if err := atomicfile.WriteFile(path, append(b, '\n'), 0o600); err != nil {
		return fmt.Errorf("write dev state: %w", err)
	}
	return nil
}

func randomHex(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err) // crypto/rand never fails on Linux
	}
	return hex.EncodeToString(b)
}
