// Package state holds what POST /init sets and every other part of envd
// reads: environment variables, default user and workdir, and the access
// token.
package state

import (
	"crypto/subtle"
	"maps"
	"sync"
)

// State is safe for concurrent use.
type State struct {
	mu       sync.RWMutex
	envs     map[string]string
	user     string
	workdir  string
	token    []byte
	hasToken bool
}

// New returns a State with a default user (may be empty: the user envd runs as).
func New(defaultUser, defaultWorkdir string) *State {
	return &State{envs: map[string]string{}, user: defaultUser, workdir: defaultWorkdir}
}

// Update is what one /init call carries. Nil or empty fields are left as they are.
type Update struct {
	Envs        map[string]string
	User        string
	Workdir     string
	AccessToken *string
}

// Apply merges u into the state.
func (s *State) Apply(u Update) {
	s.mu.Lock()
	defer s.mu.Unlock()
	maps.Copy(s.envs, u.Envs)
	if u.User != "" {
		s.user = u.User
	}
	if u.Workdir != "" {
		s.workdir = u.Workdir
	}
	if u.AccessToken != nil {
		s.token = []byte(*u.AccessToken)
		s.hasToken = *u.AccessToken != ""
	}
}

// Envs returns a copy of the default environment variables.
func (s *State) Envs() map[string]string {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return maps.Clone(s.envs)
}

// DefaultUser returns the user for calls that name none ("" = envd's own user).
func (s *State) DefaultUser() string {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.user
}

// DefaultWorkdir returns the working directory for processes that name none.
func (s *State) DefaultWorkdir() string {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.workdir
}

// TokenSet reports whether an access token is required.
func (s *State) TokenSet() bool {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.hasToken
}

// Token returns the access token and whether one is set (for what is
// derived from it, such as file URL signatures).
func (s *State) Token() (string, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return string(s.token), s.hasToken
}

// CheckToken reports whether got is acceptable: always when no token is set,
// else when it equals the token (constant-time).
func (s *State) CheckToken(got string) bool {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if !s.hasToken {
		return true
	}
	return subtle.ConstantTimeCompare([]byte(got), s.token) == 1
}
