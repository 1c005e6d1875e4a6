// Package oauth is sign-in through external OAuth 2.0 providers: the
// Provider interface and its registry, the GitHub provider, the signed state
// cookie that carries a flow's PKCE verifier, and the Redis store of
// one-time codes and used states. The account rules (who signs in, who is
// created, what may be linked) are the service layer's.
package oauth

import (
	"context"
	"errors"
	"slices"
)

// Profile is who the provider says the user is.
type Profile struct {
	// ID is the provider's stable account id (a login can be renamed).
	ID    string
	Login string
	Name  string
	// Email is the account's primary email; EmailVerified says whether the
	// provider verified it. Only a verified email may sign a user up.
	Email         string
	EmailVerified bool
}

// Provider is one OAuth 2.0 provider. Adding one (Google...) is a new
// implementation registered in the Registry; nothing else changes.
type Provider interface {
	// Name is the provider's path segment and stored name, e.g. "github".
	Name() string
	// AuthCodeURL is where the browser goes to consent: it carries state
	// and the S256 challenge of verifier.
	AuthCodeURL(state, verifier string) string
	// Profile exchanges an authorization code (with the PKCE verifier) and
	// reads the user's profile with the token it gets. The token is never
	// returned: it serves this one read.
	Profile(ctx context.Context, code, verifier string) (Profile, error)
}

// ErrCodeRejected: the provider refused the authorization code (unknown,
// used, expired, or its PKCE verifier does not match).
var ErrCodeRejected = errors.New("the provider refused the authorization code")

// ErrUnavailable: the provider could not be reached or failed (network
// error, 5xx, an answer that is not what its API documents).
var ErrUnavailable = errors.New("the provider is unavailable")

// Registry holds the configured providers by name.
type Registry struct {
	providers map[string]Provider
}

// NewRegistry registers ps; a name registered twice is an error.
func NewRegistry(ps ...Provider) (*Registry, error) {
	r := &Registry{providers: make(map[string]Provider, len(ps))}
	for _, p := range ps {
		if _, dup := r.providers[p.Name()]; dup {
			return nil, errors.New("oauth: provider " + p.Name() + " registered twice")
		}
		r.providers[p.Name()] = p
	}
	return r, nil
}

// Get is the provider called name; false when it is not configured. A nil
// registry has none.
func (r *Registry) Get(name string) (Provider, bool) {
	if r == nil {
		return nil, false
	}
	p, ok := r.providers[name]
	return p, ok
}

// Names lists the configured providers, sorted.
func (r *Registry) Names() []string {
	if r == nil {
		return nil
	}
	names := make([]string, 0, len(r.providers))
	for n := range r.providers {
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}
