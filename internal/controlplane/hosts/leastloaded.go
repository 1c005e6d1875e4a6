package hosts

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/wrenn-dev/wrenn/internal/db"
)

var _ Scheduler = (*LeastLoaded)(nil)

// LeastLoaded places a sandbox on the online host with the fewest pending
// and running sandboxes (ties go to the lowest host ID). A team with BYOC
// enabled runs only on its own hosts; every other team only on shared ones.
type LeastLoaded struct {
	q *db.Queries
}

// NewLeastLoaded builds the scheduler.
func NewLeastLoaded(q *db.Queries) *LeastLoaded { return &LeastLoaded{q: q} }

// Pick returns ErrHostUnavailable when the team has no usable host.
func (l *LeastLoaded) Pick(ctx context.Context, teamID string) (db.Host, error) {
	byoc, err := l.q.GetTeamBYOC(ctx, teamID)
	if errors.Is(err, pgx.ErrNoRows) {
		return db.Host{}, fmt.Errorf("team %s: %w", teamID, ErrHostUnavailable)
	}
	if err != nil {
		return db.Host{}, fmt.Errorf("load team %s: %w", teamID, err)
	}
	var own *string
	if byoc {
		own = &teamID
	}
	rows, err := l.q.ListSchedulableHostsByLoad(ctx, own)
	if err != nil {
		return db.Host{}, fmt.Errorf("list hosts by load: %w", err)
	}
	for _, r := range rows {
		h, err := l.q.GetHost(ctx, r.ID)
		if errors.Is(err, pgx.ErrNoRows) {
			continue // deleted meanwhile
		}
		if err != nil {
			return db.Host{}, fmt.Errorf("load host %s: %w", r.ID, err)
		}
		if h.Status == StatusOnline {
			return h, nil
		}
	}
	kind := "shared"
	if byoc {
		kind = "team's own"
	}
	return db.Host{}, fmt.Errorf("no online %s host: %w", kind, ErrHostUnavailable)
}
