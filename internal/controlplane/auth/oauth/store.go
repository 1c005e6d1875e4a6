package oauth

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/wrenn-dev/wrenn/internal/controlplane/auth"
)

// CodeTTL is how long the dashboard has to exchange a one-time code.
const CodeTTL = 60 * time.Second

// ErrCodeInvalid: a one-time code that is unknown, used or expired.
var ErrCodeInvalid = errors.New("the one-time code is invalid, used or expired")

// Store keeps what must be single-use across replicas in Redis: the states
// already called back, and the one-time codes that hand a session to the
// dashboard. Both are stored as SHA-256 hashes, never as given.
type Store struct{ rdb *redis.Client }

// NewStore uses rdb.
func NewStore(rdb *redis.Client) *Store { return &Store{rdb: rdb} }

func stateKey(state string) string { return "wrenn:oauth:state:" + auth.HashToken(state) }
func codeKey(code string) string   { return "wrenn:oauth:code:" + auth.HashToken(code) }

// ClaimState marks state used; false when it was used before. The mark
// outlives the state's cookie, so a replay always finds it.
func (s *Store) ClaimState(ctx context.Context, state string, ttl time.Duration) (bool, error) {
	ok, err := s.rdb.SetNX(ctx, stateKey(state), 1, ttl).Result()
	if err != nil {
		return false, fmt.Errorf("claim oauth state: %w", err)
	}
	return ok, nil
}

// NewCode stores a one-time code for userID and returns it.
func (s *Store) NewCode(ctx context.Context, userID string) (string, error) {
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("generate one-time code: %w", err)
	}
	code := base64.RawURLEncoding.EncodeToString(b[:])
	if err := s.rdb.Set(ctx, codeKey(code), userID, CodeTTL).Err(); err != nil {
		return "", fmt.Errorf("store one-time code: %w", err)
	}
	return code, nil
}

// TakeCode consumes code (GETDEL: two exchanges of one code cannot both
// win) and returns its user.
func (s *Store) TakeCode(ctx context.Context, code string) (string, error) {
	if code == "" {
		return "", ErrCodeInvalid
	}
	userID, err := s.rdb.GetDel(ctx, codeKey(code)).Result()
	if errors.Is(err, redis.Nil) {
		return "", ErrCodeInvalid
	}
	if err != nil {
		return "", fmt.Errorf("take one-time code: %w", err)
	}
	return userID, nil
}
