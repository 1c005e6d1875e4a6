// Package users resolves the user a call runs as.
package users

import (
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"os/user"
	"strconv"
	"strings"
)

// User is a resolved system user.
type User struct {
	Name   string
	UID    uint32
	GID    uint32
	Groups []uint32
	Home   string
}

// ErrUnknown is returned for a user that does not exist.
var ErrUnknown = errors.New("unknown user")

// Lookup resolves name ("" = the user envd runs as).
func Lookup(name string) (*User, error) {
	var u *user.User
	var err error
	if name == "" {
		u, err = user.LookupId(strconv.Itoa(os.Getuid()))
		if err != nil {
			// A minimal image may have no /etc/passwd: describe ourselves.
			home, _ := os.UserHomeDir()
			if home == "" {
				home = "/"
			}
			return &User{Name: strconv.Itoa(os.Getuid()), UID: uint32(os.Getuid()), GID: uint32(os.Getgid()), Home: home}, nil
		}
	} else {
		u, err = user.Lookup(name)
		if err != nil {
			var unknown user.UnknownUserError
			if errors.As(err, &unknown) {
				return nil, fmt.Errorf("%w %q", ErrUnknown, name)
			}
			return nil, fmt.Errorf("look up user %q: %w", name, err)
		}
	}
	uid, err := strconv.ParseUint(u.Uid, 10, 32)
	if err != nil {
		return nil, fmt.Errorf("user %q: bad uid %q", u.Username, u.Uid)
	}
	gid, err := strconv.ParseUint(u.Gid, 10, 32)
	if err != nil {
		return nil, fmt.Errorf("user %q: bad gid %q", u.Username, u.Gid)
	}
	res := &User{Name: u.Username, UID: uint32(uid), GID: uint32(gid), Home: u.HomeDir}
	if res.Home == "" {
		res.Home = "/"
	}
	if ids, err := u.GroupIds(); err == nil {
		for _, g := range ids {
			if n, err := strconv.ParseUint(g, 10, 32); err == nil {
				res.Groups = append(res.Groups, uint32(n))
			}
		}
	}
	return res, nil
}

// IsSelf reports whether u is the identity envd runs with, so no switch is needed.
func (u *User) IsSelf() bool {
	return int(u.UID) == os.Getuid() && int(u.GID) == os.Getgid()
}

// FromBasicAuth extracts the user name from an "Authorization: Basic
// base64(user:)" header, the way E2B SDKs name the user of an RPC. ok is
// false when the header is absent.
func FromBasicAuth(header string) (name string, ok bool, err error) {
	if header == "" {
		return "", false, nil
	}
	scheme, enc, found := strings.Cut(header, " ")
	if !found || !strings.EqualFold(scheme, "Basic") {
		return "", false, fmt.Errorf("authorization header: unsupported scheme")
	}
	raw, err := base64.StdEncoding.DecodeString(strings.TrimSpace(enc))
	if err != nil {
		return "", false, fmt.Errorf("authorization header: bad base64: %w", err)
	}
	name, _, _ = strings.Cut(string(raw), ":")
	return name, name != "", nil
}
