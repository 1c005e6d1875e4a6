// Package ids makes the control plane's resource IDs: a prefix and 20
// random base32 characters (100 bits), lowercase and DNS-safe.
package ids

import (
	"crypto/rand"
	"encoding/base32"
	"strings"
)

// Prefixes of the resource kinds.
const (
	User     = "usr-"
	Team     = "team-"
	APIKey   = "key-"
	Sandbox  = "sb-"
	Host     = "host-"
	Template = "tpl-"
	Build    = "bld-"
	// Operation names one lifecycle operation recorded on a sandbox, and
	// one attempt at an idempotent request.
	Operation = "op-"
	Channel   = "ch-"
	AuditLog  = "log-"
	// Event is an audit row's id on the event stream.
	Event = "evt-"
)

var enc = base32.NewEncoding("abcdefghijklmnopqrstuvwxyz234567").WithPadding(base32.NoPadding)

// New returns prefix followed by 100 random bits.
func New(prefix string) string {
	var b [13]byte // 104 bits; 20 base32 characters keep 100 of them
	_, _ = rand.Read(b[:])
	return prefix + enc.EncodeToString(b[:])[:20]
}

// Valid reports whether s looks like an ID with the prefix; used to reject
// garbage early with a 404 instead of querying for it.
func Valid(prefix, s string) bool {
	rest, ok := strings.CutPrefix(s, prefix)
	if !ok || len(rest) != 20 {
		return false
	}
	for _, c := range rest {
		if !(c >= 'a' && c <= 'z' || c >= '2' && c <= '7') {
			return false
		}
	}
	return true
}
