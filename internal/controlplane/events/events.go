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

	"github.com/wrenn-dev/wrenn/internal/controlplane/audit"
	"github.com/wrenn-dev/wrenn/internal/db"
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

// Known are the event types a channel filter may name: every type the
// audit trail records (audit.EventTypes) and channel.test, which only a
// test send delivers.
var Known = append(slices.Clone(audit.EventTypes), TestType)

// TestType is the type of the event a channel test send delivers.
const TestType = "channel.test"

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

// FromAuditLog is the event of an audit row; a platform row (no team) has
// an empty team_id, and data is always an object.
func FromAuditLog(l db.AuditLog) Event {
	team := ""
	if l.TeamID != nil {
		team = *l.TeamID
	}
	data := l.Metadata
	if len(data) == 0 {
		data = json.RawMessage("{}")
	}
	return Event{ID: l.EventID, Type: l.ResourceType + "." + l.Action, OccurredAt: l.CreatedAt.UTC(), TeamID: team,
		Actor: Actor{Type: l.ActorType, ID: l.ActorID, Name: l.ActorName}, Resource: Resource{Type: l.ResourceType, ID: l.ResourceID},
		Status: l.Status, Data: data}
}
