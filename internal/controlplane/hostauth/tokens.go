// Package hostauth registers host agents and authenticates them: one-time
// registration tokens (Redis, single use), host JWTs signed with a key and
// audience of their own (a user's token can never act as a host, nor the
// reverse), and rotating refresh tokens stored hashed in PostgreSQL with
// reuse detection. It also holds the host lifecycle rules (create, list,
// regenerate token, heartbeat, graceful delete).
package hostauth

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/wrenn-dev/wrenn/internal/controlplane/auth"

	"github.com/golang-jwt/jwt/v5"
)

// Token prefixes make leaked tokens recognizable.
const (
	RegistrationTokenPrefix = "wrnhr_"
	RefreshTokenPrefix      = "wrnrt_"
)

// HostAudience is the audience of host JWTs; user JWTs carry none.
const HostAudience = "wrenn-host"

const hostIssuer = "wrenn"

// ErrInvalidHostToken is returned for any host JWT that does not verify.
var ErrInvalidHostToken = errors.New("invalid or expired host token")

// randomToken returns prefix + 32 random bytes, base64url.
func randomToken(prefix string) (string, error) {
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("generate token: %w", err)
	}
	return prefix + base64.RawURLEncoding.EncodeToString(b[:]), nil
}

// hashToken is the stored form of a token: SHA-256, hex.
func hashToken(tok string) string {
	sum := sha256.Sum256([]byte(tok))
	return hex.EncodeToString(sum[:])
}

// wellFormed rejects garbage before any lookup.
func wellFormed(prefix, tok string) bool {
	rest, ok := strings.CutPrefix(tok, prefix)
	if !ok || len(rest) != 43 {
		return false
	}
	_, err := base64.RawURLEncoding.DecodeString(rest)
	return err == nil
}

// DeriveHostKey derives the host JWT signing key from the user JWT secret,
// so a single WRENN_JWT_SECRET still yields two unrelated keys.
func DeriveHostKey(userSecret string) []byte {
	return auth.DeriveKey(userSecret, "wrenn host jwt signing key v1")
}

// HostClaims are a host JWT's claims: the subject is the host ID.
type HostClaims struct {
	jwt.RegisteredClaims
}

// HostTokens issues and verifies host JWTs.
type HostTokens struct {
	key []byte
	ttl time.Duration
	now func() time.Time
}

// NewHostTokens builds the issuer; key must be at least 32 bytes.
func NewHostTokens(key []byte, ttl time.Duration, now func() time.Time) (*HostTokens, error) {
	if len(key) < 32 {
		return nil, fmt.Errorf("host jwt key must be at least 32 bytes")
	}
	if ttl <= 0 {
		return nil, fmt.Errorf("host jwt ttl must be positive")
	}
	if now == nil {
		now = time.Now
	}
	return &HostTokens{key: key, ttl: ttl, now: now}, nil
}

// Issue signs a token for hostID.
func (t *HostTokens) Issue(hostID string) (string, time.Time, error) {
	now := t.now()
	exp := now.Add(t.ttl)
	c := HostClaims{RegisteredClaims: jwt.RegisteredClaims{
		Subject: hostID, Issuer: hostIssuer, Audience: jwt.ClaimStrings{HostAudience},
		IssuedAt: jwt.NewNumericDate(now), ExpiresAt: jwt.NewNumericDate(exp),
	}}
	s, err := jwt.NewWithClaims(jwt.SigningMethodHS256, c).SignedString(t.key)
	if err != nil {
		return "", time.Time{}, fmt.Errorf("sign host jwt: %w", err)
	}
	return s, exp, nil
}

// Parse verifies a host token and returns the host ID.
func (t *HostTokens) Parse(token string) (string, error) {
	var c HostClaims
	_, err := jwt.ParseWithClaims(token, &c, func(*jwt.Token) (any, error) { return t.key, nil },
		jwt.WithValidMethods([]string{"HS256"}), jwt.WithIssuer(hostIssuer), jwt.WithAudience(HostAudience),
		jwt.WithExpirationRequired(), jwt.WithTimeFunc(t.now))
	if err != nil || c.Subject == "" {
		return "", ErrInvalidHostToken
	}
	return c.Subject, nil
}
