// Package hosts reaches host agents: a pool of Connect clients keyed by
// host ID, and the scheduler that picks a host for a new sandbox.
package hosts

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"

	"connectrpc.com/connect"
	"github.com/jackc/pgx/v5"

	"github.com/wrenn-dev/wrenn/internal/db"
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
// A client is stateless; the cache only saves re-creating it.
type Pool struct {
	q          *db.Queries
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

// NewPool builds a pool. httpClient carries the transport (mTLS later); nil
// uses a default client without an overall timeout, as streams are long.
func NewPool(q *db.Queries, httpClient *http.Client, opts ...connect.ClientOption) *Pool {
	if httpClient == nil {
		httpClient = &http.Client{Transport: http.DefaultTransport.(*http.Transport).Clone()}
	}
	return &Pool{q: q, httpClient: httpClient, opts: opts, clients: map[string]cached{}}
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
	c := hostagentv1connect.NewHostAgentServiceClient(p.httpClient, BaseURL(h.Address), p.opts...)
	p.clients[h.ID] = cached{address: h.Address, client: c}
	return c
}

// Evict forgets a host's client (host deleted or re-addressed).
func (p *Pool) Evict(hostID string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.clients, hostID)
}

// BaseURL turns a stored address (host:port or a URL) into a base URL.
func BaseURL(address string) string {
	if strings.Contains(address, "://") {
		return strings.TrimSuffix(address, "/")
	}
	return "http://" + address
}
