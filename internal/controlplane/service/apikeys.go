package service

import (
	"context"
	"time"

	"github.com/wrenn-dev/wrenn/internal/controlplane/auth"
	"github.com/wrenn-dev/wrenn/internal/controlplane/ids"
	"github.com/wrenn-dev/wrenn/internal/db"
)

// APIKey is a key as listed (never with its hash).
type APIKey struct {
	ID           string     `json:"id"`
	Name         string     `json:"name"`
	Prefix       string     `json:"prefix"`
	CreatedBy    *string    `json:"created_by"`
	CreatorEmail string     `json:"creator_email,omitempty"`
	CreatedAt    time.Time  `json:"created_at"`
	LastUsedAt   *time.Time `json:"last_used_at"`
}

// NewAPIKey is the answer to key creation: the only time the key is shown.
type NewAPIKey struct {
	APIKey
	Key string `json:"key"`
}

// APIKeyInput is POST /v1/api-keys.
type APIKeyInput struct {
	Name string `json:"name"`
}

// CreateAPIKey makes a key for the caller's current team.
func (s *Service) CreateAPIKey(ctx context.Context, a auth.AuthContext, in APIKeyInput) (NewAPIKey, error) {
	name, err := checkName("name", in.Name, true, 100)
	if err != nil {
		return NewAPIKey{}, err
	}
	plain, prefix, hash, err := auth.NewAPIKey()
	if err != nil {
		return NewAPIKey{}, Internal("create api key", err)
	}
	uid := a.UserID
	var k db.TeamApiKey
	err = s.inTx(ctx, func(q *db.Queries) error {
		var err error
		if k, err = q.CreateAPIKey(ctx, db.CreateAPIKeyParams{ID: ids.New(ids.APIKey), TeamID: a.TeamID, Name: name, KeyHash: hash, KeyPrefix: prefix, CreatedBy: &uid}); err != nil {
			return err
		}
		return s.audit.APIKeyCreated(ctx, q, ActorOf(a), a.TeamID, k.ID, k.Name)
	})
	if err != nil {
		return NewAPIKey{}, Internal("create api key", err)
	}
	return NewAPIKey{APIKey: APIKey{ID: k.ID, Name: k.Name, Prefix: k.KeyPrefix, CreatedBy: k.CreatedBy, CreatedAt: k.CreatedAt}, Key: plain}, nil
}

// ListAPIKeys lists the current team's keys.
func (s *Service) ListAPIKeys(ctx context.Context, a auth.AuthContext) ([]APIKey, error) {
	rows, err := s.q.ListAPIKeys(ctx, a.TeamID)
	if err != nil {
		return nil, Internal("list api keys", err)
	}
	out := make([]APIKey, 0, len(rows))
	for _, r := range rows {
		out = append(out, APIKey{ID: r.ID, Name: r.Name, Prefix: r.KeyPrefix, CreatedBy: r.CreatedBy, CreatorEmail: r.CreatorEmail, CreatedAt: r.CreatedAt, LastUsedAt: r.LastUsedAt})
	}
	return out, nil
}

// DeleteAPIKey: members may delete their own keys, admins and owners any.
func (s *Service) DeleteAPIKey(ctx context.Context, a auth.AuthContext, keyID string) error {
	k, err := s.q.GetAPIKey(ctx, db.GetAPIKeyParams{ID: keyID, TeamID: a.TeamID})
	if isNoRows(err) {
		return NotFound(CodeAPIKeyNotFound, "API key not found")
	}
	if err != nil {
		return Internal("delete api key", err)
	}
	own := k.CreatedBy != nil && *k.CreatedBy == a.UserID
	if !own && !canManage(a.Role) {
		return Forbidden(CodeForbidden, "members can only delete their own API keys")
	}
	err = s.inTx(ctx, func(q *db.Queries) error {
		n, err := q.DeleteAPIKey(ctx, db.DeleteAPIKeyParams{ID: keyID, TeamID: a.TeamID})
		if err != nil || n == 0 {
			return err
		}
		return s.audit.APIKeyRevoked(ctx, q, ActorOf(a), a.TeamID, k.ID, k.Name)
	})
	if err != nil {
		return Internal("delete api key", err)
	}
	return nil
}
