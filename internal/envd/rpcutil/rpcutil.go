// Package rpcutil holds what the Connect services of envd share: who the
// caller is and how long to wait between keepalives.
package rpcutil

import (
	"errors"
	"net/http"
	"strconv"
	"time"

	"connectrpc.com/connect"

	"github.com/wrenn-dev/wrenn/internal/envd/paths"
	"github.com/wrenn-dev/wrenn/internal/envd/state"
	"github.com/wrenn-dev/wrenn/internal/envd/uploads"
	"github.com/wrenn-dev/wrenn/internal/envd/users"
)

// KeepaliveHeader is the request header (seconds) E2B SDKs send on
// streaming calls; envd sends a keepalive event at that interval.
const KeepaliveHeader = "Keepalive-Ping-Interval"

// DefaultKeepalive is used when the client sends no interval.
const DefaultKeepalive = 50 * time.Second

// Keepalive returns the keepalive interval a request asks for.
func Keepalive(h http.Header) time.Duration {
	if v := h.Get(KeepaliveHeader); v != "" {
		if n, err := strconv.Atoi(v); err == nil && n > 0 && n <= 3600 {
			return time.Duration(n) * time.Second
		}
	}
	return DefaultKeepalive
}

// Env is what the services need from the rest of envd.
type Env struct {
	State    *state.State
	Resolver paths.Resolver
	// Uploads stages uploads and tells watchers when they land.
	Uploads *uploads.Area
}

// User resolves the caller's user: the Basic auth user name when given
// (E2B SDKs send "Authorization: Basic base64(user:)"), else the default.
func (e Env) User(h http.Header) (*users.User, error) {
	name, ok, err := users.FromBasicAuth(h.Get("Authorization"))
	if err != nil {
		return nil, connect.NewError(connect.CodeInvalidArgument, err)
	}
	if !ok {
		name = e.State.DefaultUser()
	}
	return LookupUser(name)
}

// LookupUser resolves name, mapping failures to Connect errors.
func LookupUser(name string) (*users.User, error) {
	u, err := users.Lookup(name)
	if err != nil {
		if errors.Is(err, users.ErrUnknown) {
			return nil, connect.NewError(connect.CodeInvalidArgument, err)
		}
		return nil, connect.NewError(connect.CodeInternal, err)
	}
	return u, nil
}

// Resolve maps a client path for user u, mapping failures to Connect errors.
func (e Env) Resolve(p string, u *users.User) (string, error) {
	hp, err := e.Resolver.Resolve(p, u.Home)
	if err != nil {
		return "", connect.NewError(connect.CodeInvalidArgument, err)
	}
	return hp, nil
}
