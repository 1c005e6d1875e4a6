// Package registration is the host agent's side of joining a control
// plane: it trades a one-time registration token for credentials (kept in
// WRENN_DIR/host-credentials.json, mode 0600), then sends heartbeats,
// refreshing its host JWT when the control plane refuses it. When the
// credentials cannot be refreshed, or the control plane stays unreachable
// too long, it pauses every sandbox (a PauseAll callback): an agent the
// control plane cannot see must not keep running billable work. A 404 on
// heartbeat means the host was deleted, and the loop stops. Registration
// and refresh are retried with backoff while the control plane is down or
// failing; only its refusal (a 4xx) is final. The agent may know several
// control plane URLs (replicas on one database): each call goes to the one
// that answered last and fails over to the next on a network error or a
// 5xx. Any control plane's call to this agent also counts as contact
// (Contact), so the agent pauses only when none has been heard from.
package registration

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/wrenn-dev/wrenn/internal/atomicfile"
	"github.com/wrenn-dev/wrenn/internal/hostreport"
	"github.com/wrenn-dev/wrenn/internal/pki"
)

// CredentialsFile is the name of the credentials file inside WRENN_DIR.
const CredentialsFile = "host-credentials.json"

// Specs describe this machine to the control plane.
type Specs = hostreport.Specs

// Resources are the report sent at registration and in every heartbeat.
type Resources = hostreport.Resources

// Credentials are the agent's identity with its control plane.
type Credentials struct {
	// CPURL is the first of CPURLs; files written before the list existed
	// hold it alone.
	CPURL string `json:"cp_url"`
	// CPURLs are every control plane URL the agent may use, in order.
	CPURLs                []string  `json:"cp_urls,omitempty"`
	HostID                string    `json:"host_id"`
	Token                 string    `json:"token"`
	TokenExpiresAt        time.Time `json:"token_expires_at"`
	RefreshToken          string    `json:"refresh_token"`
	RefreshTokenExpiresAt time.Time `json:"refresh_token_expires_at"`
	// CertPEM is the host's mTLS leaf, KeyPEM its private key (made here,
	// never sent) and CACertPEM the CA the control plane's client
	// certificate must come from; all empty when the control plane has no
	// CA (plain HTTP mode).
	CertPEM   string `json:"cert_pem,omitempty"`
	KeyPEM    string `json:"key_pem,omitempty"`
	CACertPEM string `json:"ca_cert_pem,omitempty"`
}

// MTLS says whether these credentials carry a host certificate.
func (c Credentials) MTLS() bool { return c.CertPEM != "" }

var (
	// ErrNotRegistered: no credentials file; run with --register first.
	ErrNotRegistered = errors.New("this agent is not registered with a control plane (run `wrenn agent --register TOKEN --address HOST:PORT --cp-url URL`)")
	// ErrHostDeleted: the control plane answered 404; the host was deleted.
	ErrHostDeleted = errors.New("the control plane deleted this host")
	// ErrCredentialsRejected: the refresh token was refused; register again.
	ErrCredentialsRejected = errors.New("the control plane rejected this host's credentials; register again with a new token")
)

// Contact records when a control plane last called this agent (any RPC of
// its API): proof that some replica is alive and reaches the host even when
// heartbeats fail. The zero value is ready; safe for concurrent use.
type Contact struct{ at atomic.Int64 }

// Touch records a call now.
func (c *Contact) Touch() { c.at.Store(time.Now().UnixNano()) }

// Last is the time of the last call (zero: none yet).
func (c *Contact) Last() time.Time {
	if n := c.at.Load(); n != 0 {
		return time.Unix(0, n)
	}
	return time.Time{}
}

// APIError is an error answer of the control plane.
type APIError struct {
	Status  int
	Code    string
	Message string
}

func (e *APIError) Error() string {
	return fmt.Sprintf("control plane answered %d %s: %s", e.Status, e.Code, e.Message)
}

// CredentialsPath is where dir's credentials live.
func CredentialsPath(dir string) string { return filepath.Join(dir, CredentialsFile) }

// Load reads the credentials in dir.
func Load(dir string) (Credentials, error) {
	raw, err := os.ReadFile(CredentialsPath(dir))
	if errors.Is(err, fs.ErrNotExist) {
		return Credentials{}, ErrNotRegistered
	}
	if err != nil {
		return Credentials{}, fmt.Errorf("read host credentials: %w", err)
	}
	return parseCredentials(raw)
}

func parseCredentials(raw []byte) (Credentials, error) {
	var c Credentials
	if err := json.Unmarshal(raw, &c); err != nil {
		return Credentials{}, fmt.Errorf("parse %s: %w", CredentialsFile, err)
	}
	if c.HostID == "" || c.Token == "" || c.RefreshToken == "" || c.CPURL == "" {
		return Credentials{}, fmt.Errorf("parse %s: host_id, token, refresh_token and cp_url are required", CredentialsFile)
	}
	for _, u := range c.URLs() {
		if err := checkCPURL(u); err != nil {
			return Credentials{}, fmt.Errorf("parse %s: %w", CredentialsFile, err)
		}
	}
	return c, nil
}

// URLs are the control plane URLs to use, in order.
func (c Credentials) URLs() []string {
	if len(c.CPURLs) > 0 {
		return c.CPURLs
	}
	return []string{c.CPURL}
}

// withURLs points c at urls (non-empty).
func (c Credentials) withURLs(urls []string) Credentials {
	c.CPURL, c.CPURLs = urls[0], slices.Clone(urls)
	return c
}

// Save writes the credentials atomically with mode 0600: a crash never
// leaves a half-written file, which would lock the host out.
func Save(dir string, c Credentials) error {
	raw, err := json.MarshalIndent(c, "", "  ")
	if err != nil {
		return fmt.Errorf("encode host credentials: %w", err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create %s: %w", dir, err)
	}
	if err := atomicfile.WriteFile(CredentialsPath(dir), raw, 0o600); err != nil {
		return fmt.Errorf("save host credentials: %w", err)
	}
	return nil
}

func checkCPURL(raw string) error {
	u, err := url.Parse(raw)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("control plane URL must be http(s)://host[:port], got %q", raw)
	}
	return nil
}

// controlPlanes talks to the control plane's host routes on one of its
// URLs: the one that answered last, failing over to the next when a call
// fails in a way another replica may not (Transient).
type controlPlanes struct {
	http *http.Client
	urls []string
	mu   sync.Mutex
	cur  int
}

func newControlPlanes(hc *http.Client, urls []string) *controlPlanes {
	if hc == nil {
		hc = &http.Client{Timeout: 30 * time.Second}
	}
	return &controlPlanes{http: hc, urls: urls}
}

// post sends body as JSON to each URL in turn, from the current one, until
// one answers other than Transient, and decodes a 200 answer into out. The
// error is the last URL's.
func (c *controlPlanes) post(ctx context.Context, path, bearer string, body, out any) error {
	c.mu.Lock()
	first := c.cur
	c.mu.Unlock()
	var err error
	for i := range c.urls {
		n := (first + i) % len(c.urls)
		err = postOne(ctx, c.http, c.urls[n], path, bearer, body, out)
		if err == nil || !Transient(err) || ctx.Err() != nil {
			c.mu.Lock()
			c.cur = n
			c.mu.Unlock()
			return err
		}
	}
	return err
}

// postOne is one POST to the control plane at base.
func postOne(ctx context.Context, hc *http.Client, base, path, bearer string, body, out any) error {
	var rd io.Reader = http.NoBody
	if body != nil {
		raw, err := json.Marshal(body)
		if err != nil {
			return fmt.Errorf("encode request: %w", err)
		}
		rd = bytes.NewReader(raw)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, strings.TrimSuffix(base, "/")+path, rd)
	if err != nil {
		return fmt.Errorf("build request: %w", err)
	}
	req.Header.Set("Content-Type", "application/json")
	if bearer != "" {
		req.Header.Set("Authorization", "Bearer "+bearer)
	}
	resp, err := hc.Do(req)
	if err != nil {
		return fmt.Errorf("POST %s: %w", path, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return fmt.Errorf("POST %s: read answer: %w", path, err)
	}
	if resp.StatusCode != http.StatusOK {
		var eb struct {
			Error struct {
				Code    string `json:"code"`
				Message string `json:"message"`
			} `json:"error"`
		}
		_ = json.Unmarshal(raw, &eb)
		return &APIError{Status: resp.StatusCode, Code: eb.Error.Code, Message: eb.Error.Message}
	}
	if out != nil {
		if err := json.Unmarshal(raw, out); err != nil {
			return fmt.Errorf("POST %s: decode answer: %w", path, err)
		}
	}
	return nil
}

// Register trades a registration token for credentials; address is the
// host:port where the control plane reaches this agent. hc may be nil.
func Register(ctx context.Context, hc *http.Client, cpURL, token, address string, specs Specs) (Credentials, error) {
	return register(ctx, hc, []string{cpURL}, token, address, specs)
}

// register is Register on the first control plane of cpURLs that answers.
func register(ctx context.Context, hc *http.Client, cpURLs []string, token, address string, specs Specs) (Credentials, error) {
	if len(cpURLs) == 0 {
		return Credentials{}, errors.New("no control plane URL")
	}
	for _, u := range cpURLs {
		if err := checkCPURL(u); err != nil {
			return Credentials{}, err
		}
	}
	if strings.TrimSpace(token) == "" {
		return Credentials{}, errors.New("registration token is empty")
	}
	if strings.TrimSpace(address) == "" {
		return Credentials{}, errors.New("agent address (host:port the control plane dials) is empty")
	}
	key, err := newCSR(address)
	if err != nil {
		return Credentials{}, err
	}
	var c Credentials
	err = newControlPlanes(hc, cpURLs).post(ctx, "/v1/hosts/register", "", map[string]any{
		"token": token, "address": address, "specs": specs, "csr": key.csr}, &c)
	if err != nil {
		return Credentials{}, fmt.Errorf("register host: %w", err)
	}
	if c.HostID == "" || c.Token == "" || c.RefreshToken == "" {
		return Credentials{}, errors.New("register host: the control plane's answer lacks credentials")
	}
	if c.MTLS() {
		c.KeyPEM = key.keyPEM
	}
	return c.withURLs(cpURLs), nil
}

// Refresh rotates the refresh token; the new credentials replace c.
func Refresh(ctx context.Context, hc *http.Client, c Credentials) (Credentials, error) {
	return refresh(ctx, newControlPlanes(hc, c.URLs()), c, slog.New(slog.DiscardHandler))
}

// refresh also renews the host's certificate from a CSR of a new key. A
// control plane that now answers without a certificate, or with one of
// another CA, does not change which CA this agent trusts: the agent keeps
// its certificate, which the control plane will refuse (and the agent its
// calls), and says so; an operator re-registers the host to trust a new CA.
func refresh(ctx context.Context, cps *controlPlanes, c Credentials, log *slog.Logger) (Credentials, error) {
	// The control plane names the SANs from the host's registered address.
	key, err := newCSR("")
	if err != nil {
		return Credentials{}, err
	}
	var out Credentials
	err = cps.post(ctx, "/v1/hosts/auth/refresh", "", map[string]string{"refresh_token": c.RefreshToken, "csr": key.csr}, &out)
	if err != nil {
		return Credentials{}, fmt.Errorf("refresh host token: %w", err)
	}
	if out.Token == "" || out.RefreshToken == "" {
		return Credentials{}, errors.New("refresh host token: the control plane's answer lacks credentials")
	}
	out.HostID = c.HostID
	switch {
	case c.MTLS() && !out.MTLS():
		log.Error("the control plane issued no host certificate (it runs without a CA now); keeping mTLS with the current certificate, never falling back to plain HTTP")
		out.CertPEM, out.KeyPEM, out.CACertPEM = c.CertPEM, c.KeyPEM, c.CACertPEM
	case c.MTLS() && !pki.SameCert([]byte(c.CACertPEM), []byte(out.CACertPEM)):
		log.Error("the control plane's CA changed; this agent keeps trusting the CA it registered with. Register the host again (new registration token) to trust the new CA")
		out.CertPEM, out.KeyPEM, out.CACertPEM = c.CertPEM, c.KeyPEM, c.CACertPEM
	case out.MTLS():
		if !c.MTLS() {
			log.Warn("the control plane now issues host certificates; restart the agent to serve mTLS")
		}
		out.KeyPEM = key.keyPEM
	}
	return out.withURLs(c.URLs()), nil
}

// csrKey is a new key and its certificate request.
type csrKey struct{ keyPEM, csr string }

// newCSR makes a key for the host's next certificate and its request; the
// key stays in this process and the credentials file.
func newCSR(address string) (csrKey, error) {
	key, err := pki.GenerateKey()
	if err != nil {
		return csrKey{}, err
	}
	keyPEM, err := pki.EncodeKey(key)
	if err != nil {
		return csrKey{}, err
	}
	csr, err := pki.NewCSR(key, address)
	if err != nil {
		return csrKey{}, err
	}
	return csrKey{keyPEM: string(keyPEM), csr: string(csr)}, nil
}
