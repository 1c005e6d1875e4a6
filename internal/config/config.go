// Package config reads the settings of every wrenn role from environment
// variables (a .env file is loaded into the environment by the CLI first).
// Each problem names its variable, so an operator knows what to fix.
package config

import (
	"encoding/hex"
	"errors"
	"fmt"
	"math"
	"net"
	"net/netip"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Getenv looks up one variable; os.Getenv in production, a map in tests.
type Getenv func(name string) string

// VarError is a problem with one variable.
type VarError struct {
	Var     string
	Problem string
}

func (e *VarError) Error() string { return e.Var + ": " + e.Problem }

// Errors collects every problem found while loading, in variable order.
type Errors []*VarError

func (e Errors) Error() string {
	parts := make([]string, len(e))
	for i, v := range e {
		parts[i] = v.Error()
	}
	return "invalid configuration: " + strings.Join(parts, "; ")
}

// reader accumulates problems so one run reports all of them at once.
type reader struct {
	get  Getenv
	errs Errors
}

func (r *reader) fail(name, format string, args ...any) {
	r.errs = append(r.errs, &VarError{Var: name, Problem: fmt.Sprintf(format, args...)})
}

func (r *reader) err() error {
	if len(r.errs) == 0 {
		return nil
	}
	return r.errs
}

func (r *reader) str(name, def string) string {
	if v := strings.TrimSpace(r.get(name)); v != "" {
		return v
	}
	return def
}

func (r *reader) required(name, hint string) string {
	v := r.str(name, "")
	if v == "" {
		r.fail(name, "is required (%s)", hint)
	}
	return v
}

func (r *reader) oneOf(name, def string, allowed ...string) string {
	v := strings.ToLower(r.str(name, def))
	if !slices.Contains(allowed, v) {
		r.fail(name, "must be one of %s, got %q", strings.Join(allowed, "|"), v)
	}
	return v
}

func (r *reader) listenAddr(name, def string) string {
	v := r.str(name, def)
	if _, port, err := net.SplitHostPort(v); err != nil {
		r.fail(name, "must be host:port or :port, got %q", v)
	} else if p, err := strconv.Atoi(port); err != nil || p < 0 || p > 65535 {
		r.fail(name, "port must be 0-65535, got %q", port)
	}
	return v
}

func (r *reader) integer(name string, def, lo, hi int) int {
	raw := r.str(name, "")
	if raw == "" {
		return def
	}
	v, err := strconv.Atoi(raw)
	if err != nil {
		r.fail(name, "must be a whole number, got %q", raw)
		return def
	}
	if v < lo || v > hi {
		r.fail(name, "must be between %d and %d, got %d", lo, hi, v)
		return def
	}
	return v
}

func (r *reader) number(name string, def, lo, hi float64) float64 {
	raw := r.str(name, "")
	if raw == "" {
		return def
	}
	v, err := strconv.ParseFloat(raw, 64)
	if err != nil || math.IsNaN(v) {
		r.fail(name, "must be a number such as 1.5, got %q", raw)
		return def
	}
	if v < lo || v > hi {
		r.fail(name, "must be between %g and %g, got %g", lo, hi, v)
		return def
	}
	return v
}

func (r *reader) duration(name string, def, lo time.Duration) time.Duration {
	raw := r.str(name, "")
	if raw == "" {
		return def
	}
	v, err := parseDuration(raw)
	if err != nil {
		r.fail(name, "must be a duration such as 30s, 5m or 60d, got %q", raw)
		return def
	}
	if v < lo {
		r.fail(name, "must be at least %s, got %s", lo, v)
		return def
	}
	return v
}

func (r *reader) boolean(name string, def bool) bool {
	raw := r.str(name, "")
	if raw == "" {
		return def
	}
	v, err := strconv.ParseBool(raw)
	if err != nil {
		r.fail(name, "must be true or false, got %q", raw)
		return def
	}
	return v
}

// durations reads a comma-separated list of durations, each at least lo.
func (r *reader) durations(name string, def []time.Duration, lo time.Duration) []time.Duration {
	raw := r.str(name, "")
	if raw == "" {
		return def
	}
	var out []time.Duration
	for item := range strings.SplitSeq(raw, ",") {
		v, err := time.ParseDuration(strings.TrimSpace(item))
		if err != nil || v < lo {
			r.fail(name, "must be comma-separated durations of at least %s such as 10s,30s; %q is not one", lo, strings.TrimSpace(item))
			return def
		}
		out = append(out, v)
	}
	return out
}

// hexKey reads a 32-byte key written as 64 hex digits; the value is never
// quoted in the error.
func (r *reader) hexKey(name string) []byte {
	raw := r.str(name, "")
	if raw == "" {
		return nil
	}
	k, err := hex.DecodeString(raw)
	if err != nil || len(k) != 32 {
		r.fail(name, "must be 64 hex digits (32 bytes, e.g. from `openssl rand -hex 32`); got %d characters that are not that", len(raw))
		return nil
	}
	return k
}

// parseDuration is time.ParseDuration plus whole days ("60d"), the unit
// retention periods are thought in.
func parseDuration(raw string) (time.Duration, error) {
	if days, ok := strings.CutSuffix(raw, "d"); ok {
		n, err := strconv.Atoi(days)
		if err != nil || n < 0 || n > 100000 {
			return 0, fmt.Errorf("bad number of days %q", days)
		}
		return time.Duration(n) * 24 * time.Hour, nil
	}
	return time.ParseDuration(raw)
}

// urlWithScheme checks that a non-empty value parses as an absolute URL
// with one of the given schemes.
func (r *reader) urlWithScheme(name, value string, schemes ...string) {
	if value == "" {
		return
	}
	u, err := url.Parse(value)
	if err != nil {
		r.fail(name, "is not a valid URL: %v", errors.Unwrap(err))
		return
	}
	if !slices.Contains(schemes, u.Scheme) || u.Host == "" {
		r.fail(name, "must be a %s URL with a host", strings.Join(schemes, " or "))
	}
}

// prefixes reads a comma-separated list of CIDRs; a bare address stands for
// itself alone (a /32 or /128).
func (r *reader) prefixes(name string) []netip.Prefix {
	var out []netip.Prefix
	for item := range strings.SplitSeq(r.str(name, ""), ",") {
		item = strings.TrimSpace(item)
		if item == "" {
			continue
		}
		p, err := netip.ParsePrefix(item)
		if err != nil {
			a, aerr := netip.ParseAddr(item)
			if aerr != nil || a.Zone() != "" {
				r.fail(name, "must be comma-separated CIDRs such as 10.0.0.0/8,fd00::/8; %q is not one", item)
				continue
			}
			p = netip.PrefixFrom(a.Unmap(), a.Unmap().BitLen())
		}
		if p.Addr().Is4In6() {
			r.fail(name, "%q: write IPv4 ranges as IPv4 (such as 10.0.0.0/8)", item)
			continue
		}
		if p != p.Masked() {
			r.fail(name, "%q has host bits set; did you mean %s?", item, p.Masked())
			continue
		}
		out = append(out, p)
	}
	return out
}
