// Package events is the shape of the events the control plane publishes on
// the Redis stream wrenn:events, as its consumers (channels) decode them,
// and the one list of event types that filters are checked against.
package events

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"time"
)

// StreamKey is the Redis stream of committed events; each entry has one
// field, Field, holding the event as JSON.
const (
	StreamKey = "wrenn:events"
	Field     = "event"
)

// Actor is who caused an event.
type Actor struct {
	Type string `json:"type"` // user, api_key or system
	ID   string `json:"id,omitempty"`
	Name string `json:"name,omitempty"`
}

// Resource is what an event is about.
type Resource struct {
	Type string `json:"type"`
	ID   string `json:"id"`
}

// Event is one entry of the stream (docs/events.md).
type Event struct {
	ID         string          `json:"id"`
	Type       string          `json:"type"`
	OccurredAt time.Time       `json:"occurred_at"`
	TeamID     string          `json:"team_id"`
	Actor      Actor           `json:"actor"`
	Resource   Resource        `json:"resource"`
	Status     string          `json:"status"`
	Data       json.RawMessage `json:"data,omitempty"`
}

// Decode reads one stream entry's event; it needs an id, a type and a team.
func Decode(raw string) (Event, error) {
	var e Event
	if err := json.Unmarshal([]byte(raw), &e); err != nil {
		return Event{}, fmt.Errorf("decode event: %w", err)
	}
	if e.ID == "" || e.Type == "" {
		return Event{}, fmt.Errorf("decode event: id and type are required")
	}
	return e, nil
}

// Known are the event types a channel filter may name. When the audit log's
// own list lands, it replaces this one.
var Known = []string{
	"sandbox.created", "sandbox.running", "sandbox.paused", "sandbox.auto_paused", "sandbox.resumed",
	"sandbox.destroyed", "sandbox.error", "sandbox.missing",
	"snapshot.created", "snapshot.deleted",
	"team.created", "team.renamed", "team.deleted",
	"api_key.created", "api_key.revoked",
	"member.added", "member.removed", "member.left", "member.role_changed",
	"host.created", "host.registered", "host.deleted", "host.marked_down", "host.marked_up",
	"auth.login_failed", "user.password_changed",
	"channel.test", "channel.created", "channel.updated", "channel.deleted", "channel.disabled", "channel.config_rotated",
}

// ValidFilter reports whether f is "*", "<resource>.*" for a known
// resource, or a known type.
func ValidFilter(f string) bool {
	if f == "*" {
		return true
	}
	if res, ok := strings.CutSuffix(f, ".*"); ok {
		return slices.ContainsFunc(Known, func(t string) bool { return strings.HasPrefix(t, res+".") })
	}
	return slices.Contains(Known, f)
}

// Matches reports whether an event type passes any of the filters.
func Matches(filters []string, typ string) bool {
	for _, f := range filters {
		if f == "*" || f == typ {
			return true
		}
		if res, ok := strings.CutSuffix(f, ".*"); ok && strings.HasPrefix(typ, res+".") {
			return true
		}
	}
	return false
}
