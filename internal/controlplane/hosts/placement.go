package hosts

import (
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"
	"sync/atomic"

	"github.com/jackc/pgx/v5"

	"github.com/wrenn-dev/wrenn/internal/db"
)

// Need is what a new (or resuming) sandbox asks of its host.
type Need struct {
	VCPUs, MemoryMB, DiskMB int
	// Excluding is a sandbox whose own row is not counted as committed (a
	// resuming sandbox's earlier reservation).
	Excluding string
	// BuildsPerHost, when above zero, marks a template build's sandbox:
	// hosts already running that many builds are passed over, so builds
	// cannot take a host's room from user sandboxes.
	BuildsPerHost int
}

// Overcommit multiplies a host's reported capacity: 1.0 admits exactly
// what the host offers. Zero fields take the defaults.
type Overcommit struct {
	Memory, VCPUs float64
}

// DefaultOvercommit: memory is not overcommitted (a guest's RAM cannot be
// taken back without a balloon, so an overcommitted host swaps or kills
// VMMs); vCPUs are time-shared threads and sandboxes idle most of the time,
// so four per host CPU.
var DefaultOvercommit = Overcommit{Memory: 1.0, VCPUs: 4.0}

func (o Overcommit) withDefaults() Overcommit {
	if o.Memory <= 0 {
		o.Memory = DefaultOvercommit.Memory
	}
	if o.VCPUs <= 0 {
		o.VCPUs = DefaultOvercommit.VCPUs
	}
	return o
}

// LimitError: no eligible host accepts a sandbox this large. Field is the
// request field at fault (vcpus, memory_mb or disk_mb) and Limit the most
// any eligible host accepts; Limit 0 means the fields fit one by one but
// no single host takes them together.
type LimitError struct {
	Field string
	Limit int
	Need  Need
}

func (e *LimitError) Error() string {
	if e.Limit == 0 {
		return fmt.Sprintf("no host takes %d vCPUs, %d MiB of memory and %d MiB of disk together", e.Need.VCPUs, e.Need.MemoryMB, e.Need.DiskMB)
	}
	return fmt.Sprintf("%s must be at most %d: no host this team can use takes more", e.Field, e.Limit)
}

// NoCapacityError: hosts would accept the sandbox but none has room left.
// Short names what is missing ("memory", "vcpus"); Free* is the most any
// eligible host has free.
type NoCapacityError struct {
	Short                   []string
	Need                    Need
	FreeMemoryMB, FreeVCPUs int64
}

func (e *NoCapacityError) Error() string {
	var parts []string
	for _, s := range e.Short {
		switch s {
		case "memory":
			parts = append(parts, fmt.Sprintf("memory (%d MiB asked, at most %d MiB free on a host)", e.Need.MemoryMB, max(e.FreeMemoryMB, 0)))
		case "vcpus":
			parts = append(parts, fmt.Sprintf("vCPUs (%d asked, at most %d free on a host)", e.Need.VCPUs, max(e.FreeVCPUs, 0)))
		case "builds":
			parts = append(parts, fmt.Sprintf("build slots (every host runs %d builds already)", e.Need.BuildsPerHost))
		}
	}
	return "no host has room for the sandbox: short of " + strings.Join(parts, " and ")
}

// Candidate is a locked host with what its sandboxes hold.
type Candidate struct {
	Host                              db.Host
	Active                            int64
	CommittedVCPUs, CommittedMemoryMB int64
}

// Scheduler places sandboxes on hosts. Every method runs inside the
// caller's transaction (q) and locks the host rows it considers, so the
// sandbox row the caller inserts (or moves to running) before committing is
// counted by the next placement: two concurrent placements never both take
// the last room on a host.
type Scheduler interface {
	// Place picks a host the team may use (its own when BYOC, shared
	// otherwise) that accepts and has room for need. It returns
	// ErrHostUnavailable, *LimitError or *NoCapacityError.
	Place(ctx context.Context, q *db.Queries, teamID string, need Need) (db.Host, error)
	// PlaceOn checks one host (a snapshot's, or a paused sandbox's own);
	// checkLimits is false for a sandbox the host already accepted once.
	PlaceOn(ctx context.Context, q *db.Queries, hostID string, need Need, checkLimits bool) (db.Host, error)
}

// Placer implements Scheduler; its policy orders the hosts with room.
type Placer struct {
	oc     Overcommit
	policy func([]Candidate) []Candidate
}

var _ Scheduler = (*Placer)(nil)

// NewRoundRobin spreads sandboxes over the hosts with room in turn.
func NewRoundRobin(oc Overcommit) *Placer {
	var next atomic.Uint64
	return &Placer{oc: oc.withDefaults(), policy: func(c []Candidate) []Candidate {
		n := int((next.Add(1) - 1) % uint64(len(c)))
		return slices.Concat(c[n:], c[:n])
	}}
}

// NewLeastLoaded places a sandbox on the host with room that has the fewest
// pending, running and missing sandboxes (ties go to the lowest host ID).
func NewLeastLoaded(oc Overcommit) *Placer {
	return &Placer{oc: oc.withDefaults(), policy: func(c []Candidate) []Candidate {
		slices.SortStableFunc(c, func(a, b Candidate) int { return int(a.Active - b.Active) })
		return c
	}}
}

// Place implements Scheduler.
func (p *Placer) Place(ctx context.Context, q *db.Queries, teamID string, need Need) (db.Host, error) {
	byoc, err := q.GetTeamBYOC(ctx, teamID)
	if errors.Is(err, pgx.ErrNoRows) {
		return db.Host{}, fmt.Errorf("team %s: %w", teamID, ErrHostUnavailable)
	}
	if err != nil {
		return db.Host{}, fmt.Errorf("load team %s: %w", teamID, err)
	}
	var own *string
	kind := "shared"
	if byoc {
		own, kind = &teamID, "team's own"
	}
	hs, err := q.LockSchedulableHosts(ctx, own)
	if err != nil {
		return db.Host{}, fmt.Errorf("lock hosts: %w", err)
	}
	if len(hs) == 0 {
		return db.Host{}, fmt.Errorf("no online %s host: %w", kind, ErrHostUnavailable)
	}
	return p.choose(ctx, q, hs, need, true)
}

// PlaceOn implements Scheduler.
func (p *Placer) PlaceOn(ctx context.Context, q *db.Queries, hostID string, need Need, checkLimits bool) (db.Host, error) {
	h, err := q.LockOnlineHost(ctx, hostID)
	if errors.Is(err, pgx.ErrNoRows) {
		return db.Host{}, fmt.Errorf("host %s is not online: %w", hostID, ErrHostUnavailable)
	}
	if err != nil {
		return db.Host{}, fmt.Errorf("lock host %s: %w", hostID, err)
	}
	return p.choose(ctx, q, []db.Host{h}, need, checkLimits)
}

func (p *Placer) choose(ctx context.Context, q *db.Queries, hs []db.Host, need Need, checkLimits bool) (db.Host, error) {
	if checkLimits {
		var err error
		if hs, err = acceptedBy(hs, need); err != nil {
			return db.Host{}, err
		}
	}
	idsOf := make([]string, len(hs))
	for i, h := range hs {
		idsOf[i] = h.ID
	}
	rows, err := q.HostsCommitted(ctx, db.HostsCommittedParams{HostIds: idsOf, ExcludingID: need.Excluding})
	if err != nil {
		return db.Host{}, fmt.Errorf("sum committed resources: %w", err)
	}
	held := make(map[string]db.HostsCommittedRow, len(rows))
	for _, r := range rows {
		held[r.HostID] = r
	}
	full := &NoCapacityError{Need: need, FreeMemoryMB: math.MinInt64, FreeVCPUs: math.MinInt64}
	var room []Candidate
	for _, h := range hs {
		c := Candidate{Host: h, Active: held[h.ID].Active, CommittedVCPUs: held[h.ID].Vcpus, CommittedMemoryMB: held[h.ID].MemoryMb}
		if need.BuildsPerHost > 0 && held[h.ID].Builds >= int64(need.BuildsPerHost) {
			if !slices.Contains(full.Short, "builds") {
				full.Short = append(full.Short, "builds")
			}
			continue
		}
		freeMem, memOK := free(h.CapacityMemoryMb, p.oc.Memory, c.CommittedMemoryMB, need.MemoryMB)
		freeCPU, cpuOK := free(int64(h.CapacityVcpus), p.oc.VCPUs, c.CommittedVCPUs, need.VCPUs)
		if memOK && cpuOK {
			room = append(room, c)
			continue
		}
		full.FreeMemoryMB, full.FreeVCPUs = max(full.FreeMemoryMB, freeMem), max(full.FreeVCPUs, freeCPU)
		if !memOK && !slices.Contains(full.Short, "memory") {
			full.Short = append(full.Short, "memory")
		}
		if !cpuOK && !slices.Contains(full.Short, "vcpus") {
			full.Short = append(full.Short, "vcpus")
		}
	}
	if len(room) == 0 {
		slices.Sort(full.Short) // builds, memory, vcpus, whatever the host order
		return db.Host{}, full
	}
	return p.policy(room)[0].Host, nil
}

// free is what is left of capacity×ratio after committed, and whether need
// fits; an unreported capacity (0) bounds nothing.
func free(capacity int64, ratio float64, committed int64, need int) (int64, bool) {
	if capacity <= 0 {
		return math.MaxInt64, true
	}
	left := int64(math.Floor(float64(capacity)*ratio)) - committed
	return left, int64(need) <= left
}

// acceptedBy keeps the hosts whose per-sandbox limits take need, or says
// which field no host takes. A limit of 0 (not reported) bounds nothing.
func acceptedBy(hs []db.Host, need Need) ([]db.Host, error) {
	fits := func(limit int32, v int) bool { return limit <= 0 || v <= int(limit) }
	var ok []db.Host
	// The most any host takes per field; -1 once a host is unbounded there.
	most := map[string]int{}
	bump := func(field string, limit int32) {
		if most[field] == -1 {
			return
		}
		if limit <= 0 {
			most[field] = -1
			return
		}
		most[field] = max(most[field], int(limit))
	}
	for _, h := range hs {
		if fits(h.MaxVcpus, need.VCPUs) && fits(h.MaxMemoryMb, need.MemoryMB) && fits(h.MaxDiskMb, need.DiskMB) {
			ok = append(ok, h)
		}
		bump("vcpus", h.MaxVcpus)
		bump("memory_mb", h.MaxMemoryMb)
		bump("disk_mb", h.MaxDiskMb)
	}
	if len(ok) > 0 {
		return ok, nil
	}
	for _, f := range []struct {
		field string
		v     int
	}{{"vcpus", need.VCPUs}, {"memory_mb", need.MemoryMB}, {"disk_mb", need.DiskMB}} {
		if m := most[f.field]; m != -1 && f.v > m {
			return nil, &LimitError{Field: f.field, Limit: m, Need: need}
		}
	}
	return nil, &LimitError{Field: "vcpus", Need: need}
}
