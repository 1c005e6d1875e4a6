package oauth

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"golang.org/x/oauth2"

	"github.com/wrenn-dev/wrenn/internal/controlplane/auth"
)

// Flow is what one sign-in or link remembers from its start to its
// callback. It travels in the state cookie, signed, so the control plane
// keeps nothing per flow but the mark that its state was used.
type Flow struct {
	State    string `json:"s"`
	Verifier string `json:"v"`
	Provider string `json:"p"`
	// LinkUserID is set in link mode: the signed-in user the identity will
	// be linked to.
	LinkUserID string `json:"u,omitempty"`
	// Redirect is the dashboard path to land on afterwards.
	Redirect string `json:"r,omitempty"`
	Expires  int64  `json:"e"`
}

// StateError is a state cookie that cannot be trusted; Reason says why, in
// words fit for the caller.
type StateError struct{ Reason string }

func (e *StateError) Error() string { return "oauth state: " + e.Reason }

// StateSigner makes and checks state cookies: the flow as base64url JSON, a
// dot, and its HMAC-SHA256 under a key derived from the session secret.
type StateSigner struct {
	key []byte
	ttl time.Duration
	now func() time.Time
}

// StateTTL is how long a user has at the provider's consent page.
const StateTTL = 10 * time.Minute

// NewStateSigner derives its key from secret (WRENN_JWT_SECRET); now may be nil.
func NewStateSigner(secret string, now func() time.Time) *StateSigner {
	if now == nil {
		now = time.Now
	}
	return &StateSigner{key: auth.DeriveKey(secret, "wrenn oauth state v1"), ttl: StateTTL, now: now}
}

// TTL is how long a state cookie is valid.
func (s *StateSigner) TTL() time.Duration { return s.ttl }

// Start begins a flow: a fresh state and PKCE verifier, and the signed
// cookie value that carries them.
func (s *StateSigner) Start(provider, linkUserID, redirect string) (Flow, string, error) {
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		return Flow{}, "", fmt.Errorf("generate oauth state: %w", err)
	}
	f := Flow{
		State: base64.RawURLEncoding.EncodeToString(b[:]), Verifier: oauth2.GenerateVerifier(),
		Provider: provider, LinkUserID: linkUserID, Redirect: redirect, Expires: s.now().Add(s.ttl).Unix(),
	}
	raw, err := json.Marshal(f)
	if err != nil {
		return Flow{}, "", fmt.Errorf("encode oauth state: %w", err)
	}
	payload := base64.RawURLEncoding.EncodeToString(raw)
	return f, payload + "." + base64.RawURLEncoding.EncodeToString(s.mac(payload)), nil
}

func (s *StateSigner) mac(payload string) []byte {
	m := hmac.New(sha256.New, s.key)
	m.Write([]byte(payload))
	return m.Sum(nil)
}

// Open checks a cookie against the callback's state and provider: signed by
// us, unexpired, and made for this very state (a state from another flow,
// or a cookie planted for one, does not match).
func (s *StateSigner) Open(cookie, state, provider string) (Flow, error) {
	if cookie == "" {
		return Flow{}, &StateError{"the sign-in state cookie is missing; start signing in again from the same browser"}
	}
	payload, sig, ok := strings.Cut(cookie, ".")
	got, err := base64.RawURLEncoding.DecodeString(sig)
	if !ok || err != nil || !hmac.Equal(got, s.mac(payload)) {
		return Flow{}, &StateError{"the sign-in state is not valid"}
	}
	raw, err := base64.RawURLEncoding.DecodeString(payload)
	var f Flow
	if err != nil || json.Unmarshal(raw, &f) != nil {
		return Flow{}, &StateError{"the sign-in state is not valid"}
	}
	if s.now().Unix() >= f.Expires {
		return Flow{}, &StateError{"the sign-in state expired; start signing in again"}
	}
	if state == "" || subtle.ConstantTimeCompare([]byte(state), []byte(f.State)) != 1 || f.Provider != provider {
		return Flow{}, &StateError{"the sign-in state does not match this browser's sign-in"}
	}
	return f, nil
}
