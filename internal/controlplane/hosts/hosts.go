// Package hosts reaches host agents: a pool of Connect clients keyed by
// host ID, and the scheduler that picks a host for a new sandbox.
package hosts

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"

	"connectrpc.com/connect"
	"github.com/jackc/pgx/v5"

	"github.com/wrenn-dev/wrenn/internal/db"
	"github.com/wrenn-dev/wrenn/internal/pki"
	"github.com/wrenn-dev/wrenn/proto/hostagent/v1/hostagentv1connect"
)

// Client is the agent RPC client.
type Client = hostagentv1connect.HostAgentServiceClient

// Host states, as in the migration's CHECK constraint. Heartbeats and
// registration make a host online; the reconciler makes a silent one
// unreachable.
const (
	StatusPending     = "pending"
	StatusOnline      = "online"
	StatusUnreachable = "unreachable"
	StatusOffline     = "offline"
)

// ErrHostUnavailable means the host is unknown, not online, or has no address.
var ErrHostUnavailable = errors.New("host unavailable")

// Pool lazily creates one client per host from the hosts table's address.
// A client is stateless; the cache only saves re-creating it. Every call
// to an agent goes through the pool's one transport (Transport): plain
// HTTP without a CA, else mutual TLS in which each agent must present its
// own host's leaf (see dialHost).
type Pool struct {
	q          *db.Queries
	certs      *pki.CPCertStore
	transport  *http.Transport
	httpClient *http.Client
	// opts apply to every agent client (the metrics interceptor).
	opts []connect.ClientOption

	mu      sync.Mutex
	clients map[string]cached
}

type cached struct {
	address string
	client  Client
}

// agentDomain ends the names the mTLS transport dials: the URL names the
// host by id, so the transport keeps connections per host (never one
// host's connection for another's call) and dials the address on record.
const agentDomain = ".agents.wrenn.internal"

// NewPool builds a pool; certs nil is plain HTTP mode. opts apply to every
// agent client (the metrics interceptor). The client has no overall
// timeout, as streams are long.
func NewPool(q *db.Queries, certs *pki.CPCertStore, opts ...connect.ClientOption) *Pool {
	t := http.DefaultTransport.(*http.Transport).Clone()
	// Calls to one agent run in parallel (streams, the reconciler, users'
	// execs): keep their connections rather than redial (and, with mTLS,
	// handshake again) beyond the default two.
	t.MaxIdleConnsPerHost = 64
	p := &Pool{q: q, certs: certs, transport: t, opts: opts, clients: map[string]cached{}}
	if certs != nil {
		t.DialTLSContext = p.dialHost
		t.ForceAttemptHTTP2 = false
	}
	p.httpClient = &http.Client{Transport: t}
	return p
}

// Transport is the one transport of every call to an agent (RPCs, and the
// sandbox proxy); requests go to URL(host).
func (p *Pool) Transport() http.RoundTripper { return p.transport }

// MTLS says whether calls to agents use mutual TLS.
func (p *Pool) MTLS() bool { return p.certs != nil }

// URL is the base URL of host h's agent through Transport.
func (p *Pool) URL(h db.Host) string {
	if p.certs == nil {
		return BaseURL(h.Address)
	}
	return "https://" + h.ID + agentDomain
}

// errRefused marks a host the transport will not talk to.
var errRefused = errors.New("refused")

// dialHost opens a TLS connection to the host named in addr, at the
// address on record now, and accepts it only when the agent presents the
// leaf recorded for that host (current or previous fingerprint), issued by
// the CA for that host id. The row is read at every dial, so a deleted
// host, a replaced leaf or a moved host takes effect for every new
// connection.
func (p *Pool) dialHost(ctx context.Context, network, addr string) (net.Conn, error) {
	name, _, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("dial agent %q: %w", addr, err)
	}
	hostID, ok := strings.CutSuffix(name, agentDomain)
	if !ok {
		return nil, fmt.Errorf("dial %q: %w: not an agent of this pool", addr, errRefused)
	}
	h, err := p.q.GetHost(ctx, hostID)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, fmt.Errorf("host %s: %w: the host was deleted", hostID, errRefused)
	}
	if err != nil {
		return nil, fmt.Errorf("load host %s: %w", hostID, err)
	}
	if h.Address == "" || h.CertFingerprint == nil {
		return nil, fmt.Errorf("host %s: %w: no address or certificate on record", hostID, errRefused)
	}
	known := []string{*h.CertFingerprint}
	if h.CertFingerprintPrev != nil {
		known = append(known, *h.CertFingerprintPrev)
	}
	var d net.Dialer
	raw, err := d.DialContext(ctx, network, hostAddr(h.Address))
	if err != nil {
		return nil, fmt.Errorf("dial host %s: %w", hostID, err)
	}
	conn := tls.Client(raw, p.certs.ClientConfig(hostID, known...))
	if err := conn.HandshakeContext(ctx); err != nil {
		raw.Close()
		return nil, fmt.Errorf("TLS handshake with host %s at %s: %w", hostID, h.Address, err)
	}
	return conn, nil
}

// hostAddr is the host:port of a stored address (host:port or a URL).
func hostAddr(address string) string {
	if u, err := url.Parse(address); err == nil && strings.Contains(address, "://") {
		return u.Host
	}
	return address
}

// Get returns the client of an online host.
func (p *Pool) Get(ctx context.Context, hostID string) (Client, error) {
	h, err := p.q.GetHost(ctx, hostID)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, fmt.Errorf("host %s: %w", hostID, ErrHostUnavailable)
	}
	if err != nil {
		return nil, fmt.Errorf("load host %s: %w", hostID, err)
	}
	if h.Status != StatusOnline || h.Address == "" {
		return nil, fmt.Errorf("host %s is %s: %w", hostID, h.Status, ErrHostUnavailable)
	}
	return p.ForHost(h), nil
}

// ForHost returns the client for a host row already loaded.
func (p *Pool) ForHost(h db.Host) Client {
	p.mu.Lock()
	defer p.mu.Unlock()
	if c, ok := p.clients[h.ID]; ok && c.address == h.Address {
		return c.client
	}
	c := hostagentv1connect.NewHostAgentServiceClient(p.httpClient, p.URL(h), p.opts...)
	p.clients[h.ID] = cached{address: h.Address, client: c}
	return c
}

// Evict forgets a host's client (host deleted, re-addressed or registered
// again) and closes idle connections, so none verified before is reused.
func (p *Pool) Evict(hostID string) {
	p.mu.Lock()
	delete(p.clients, hostID)
	p.mu.Unlock()
	p.transport.CloseIdleConnections()
}

// BaseURL turns a stored address (host:port or a URL) into a base URL.
func BaseURL(address string) string {
	if strings.Contains(address, "://") {
		return strings.TrimSuffix(address, "/")
	}
	return "http://" + address
}
