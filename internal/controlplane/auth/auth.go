// Package auth holds the control plane's credential primitives: session JWTs
// (HS256), password hashing (bcrypt), API keys (shown once, stored as
// SHA-256) and the AuthContext that the HTTP layer puts into each request.
package auth

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"math/big"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"golang.org/x/crypto/bcrypt"
)

// Method says how a request authenticated.
type Method string

const (
	MethodJWT    Method = "jwt"
	MethodAPIKey Method = "api_key"
	// MethodSystem: a part of the control plane acting on a team's
	// resources by itself (SystemActor names it), never a request.
	MethodSystem Method = "system"
)

// AuthContext is who is calling, in which team.
type AuthContext struct {
	Method Method
	// UserID is the session's user, or the API key's creator (may be empty
	// when that user was deleted).
	UserID string
	// UserEmail is the session user's email (empty for API keys).
	UserEmail string
	TeamID    string
	// Role in TeamID: owner, admin or member. API keys act as members.
	Role    string
	IsAdmin bool
	// Set for API key requests so actions record which key acted.
	APIKeyID   string
	APIKeyName string
	// SystemActor names the control plane's part acting (MethodSystem).
	SystemActor string
}

// Actor names the caller for created_by fields and logs.
func (a AuthContext) Actor() string {
	switch a.Method {
	case MethodAPIKey:
		return a.APIKeyID
	case MethodSystem:
		return a.SystemActor
	}
	return a.UserID
}

type ctxKey struct{}

// WithContext stores a in ctx.
func WithContext(ctx context.Context, a AuthContext) context.Context {
	return context.WithValue(ctx, ctxKey{}, a)
}

// FromContext returns the request's AuthContext.
func FromContext(ctx context.Context) (AuthContext, bool) {
	a, ok := ctx.Value(ctxKey{}).(AuthContext)
	return a, ok
}

// ErrInvalidToken is returned for any token that does not verify; the
// reason is not exposed to callers.
var ErrInvalidToken = errors.New("invalid or expired token")

// Tokens issues and verifies session JWTs.
type Tokens struct {
	secret []byte
	ttl    time.Duration
	now    func() time.Time
}

// NewTokens builds a token issuer; now may be nil (time.Now).
func NewTokens(secret string, ttl time.Duration, now func() time.Time) (*Tokens, error) {
	if len(secret) < 32 {
		return nil, fmt.Errorf("jwt secret must be at least 32 characters")
	}
	if ttl <= 0 {
		return nil, fmt.Errorf("jwt ttl must be positive")
	}
	if now == nil {
		now = time.Now
	}
	return &Tokens{secret: []byte(secret), ttl: ttl, now: now}, nil
}

// Claims of a session token.
type Claims struct {
	TeamID string `json:"team"`
	// SessionVersion is the user's session version when the token was
	// issued; a password change increments it and so ends older sessions.
	SessionVersion int32 `json:"sv"`
	jwt.RegisteredClaims
}

const issuer = "wrenn"

// Issue signs a session for user in team at the user's session version.
func (t *Tokens) Issue(userID, teamID string, sessionVersion int32) (string, time.Time, error) {
	now := t.now()
	exp := now.Add(t.ttl)
	var jti [12]byte
	if _, err := rand.Read(jti[:]); err != nil {
		return "", time.Time{}, fmt.Errorf("token id: %w", err)
	}
	// A unique ID keeps two sessions issued in the same second distinct.
	c := Claims{TeamID: teamID, SessionVersion: sessionVersion, RegisteredClaims: jwt.RegisteredClaims{
		Subject: userID, Issuer: issuer, ID: hex.EncodeToString(jti[:]),
		IssuedAt: jwt.NewNumericDate(now), ExpiresAt: jwt.NewNumericDate(exp),
	}}
	s, err := jwt.NewWithClaims(jwt.SigningMethodHS256, c).SignedString(t.secret)
	if err != nil {
		return "", time.Time{}, fmt.Errorf("sign jwt: %w", err)
	}
	return s, exp, nil
}

// Parse verifies a session token (signature, HS256 only, issuer, expiry).
func (t *Tokens) Parse(token string) (Claims, error) {
	var c Claims
	_, err := jwt.ParseWithClaims(token, &c, func(*jwt.Token) (any, error) { return t.secret, nil },
		jwt.WithValidMethods([]string{"HS256"}), jwt.WithIssuer(issuer), jwt.WithExpirationRequired(),
		jwt.WithTimeFunc(t.now))
	if err != nil || c.Subject == "" || c.TeamID == "" {
		return Claims{}, ErrInvalidToken
	}
	return c, nil
}

// Passwords hashes and checks passwords with bcrypt.
type Passwords struct{ Cost int }

// MaxPasswordLen is bcrypt's input limit in bytes.
const MaxPasswordLen = 72

// Hash returns the bcrypt hash of pw.
func (p Passwords) Hash(pw string) (string, error) {
	cost := p.Cost
	if cost == 0 {
		cost = bcrypt.DefaultCost
	}
	h, err := bcrypt.GenerateFromPassword([]byte(pw), cost)
	if err != nil {
		return "", fmt.Errorf("hash password: %w", err)
	}
	return string(h), nil
}

// Check reports whether pw matches hash.
func (p Passwords) Check(hash, pw string) bool {
	return bcrypt.CompareHashAndPassword([]byte(hash), []byte(pw)) == nil
}

// APIKeyPrefix starts every API key so they are recognizable (and findable
// by secret scanners).
const APIKeyPrefix = "wrn_"

const base62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"

// apiKeyRandLen random base62 characters carry about 238 bits.
const apiKeyRandLen = 40

// NewAPIKey returns a fresh key, its display prefix and its hash.
func NewAPIKey() (plain, prefix, hash string, err error) {
	var b strings.Builder
	b.WriteString(APIKeyPrefix)
	max := big.NewInt(int64(len(base62)))
	for range apiKeyRandLen {
		n, err := rand.Int(rand.Reader, max)
		if err != nil {
			return "", "", "", fmt.Errorf("generate api key: %w", err)
		}
		b.WriteByte(base62[n.Int64()])
	}
	plain = b.String()
	return plain, plain[:len(APIKeyPrefix)+6], HashAPIKey(plain), nil
}

// HashAPIKey is the stored form of a key: SHA-256, hex.
func HashAPIKey(key string) string { return HashToken(key) }

// HashToken is the stored form of a random secret (API keys, one-time
// codes): SHA-256, hex. The secrets carry 256 bits, so no salt or slow
// hash is needed.
func HashToken(tok string) string {
	sum := sha256.Sum256([]byte(tok))
	return hex.EncodeToString(sum[:])
}

// DeriveKey derives a key for one purpose from a configured secret, so one
// WRENN_JWT_SECRET yields unrelated keys for sessions and everything else.
func DeriveKey(secret, purpose string) []byte {
	m := hmac.New(sha256.New, []byte(secret))
	m.Write([]byte(purpose))
	return m.Sum(nil)
}

// LooksLikeAPIKey rejects obvious garbage before a database lookup.
func LooksLikeAPIKey(key string) bool {
	rest, ok := strings.CutPrefix(key, APIKeyPrefix)
	if !ok || len(rest) != apiKeyRandLen {
		return false
	}
	for i := 0; i < len(rest); i++ {
		if !strings.ContainsRune(base62, rune(rest[i])) {
			return false
		}
	}
	return true
}
