package devboot

import (
	"testing"
	"time"
)

// Only a heartbeat of this run's agent makes the host ready: the online
// status and heartbeat a previous run left in the database do not.
func TestHostStateHeardFrom(t *testing.T) {
	last := time.Date(2026, 12, 1, 11, 0, 0, 123456000, time.UTC)
	at := func(d time.Duration) *time.Time { t := last.Add(d); return &t }
	const addr = "127.0.0.1:40001"
	before := HostState{Status: "online", Address: "127.0.0.1:39999", LastHeartbeatAt: at(0)}
	for _, tc := range []struct {
		name   string
		before HostState
		h      HostState
		want   bool
	}{
		{"left by the previous run", before, before, false},
		{"previous run on the same port", HostState{Status: "online", Address: addr, LastHeartbeatAt: at(0)}, HostState{Status: "online", Address: addr, LastHeartbeatAt: at(0)}, false},
		{"new heartbeat, old address", before, HostState{Status: "online", Address: "127.0.0.1:39999", LastHeartbeatAt: at(time.Second)}, false},
		{"not online", before, HostState{Status: "unreachable", Address: addr, LastHeartbeatAt: at(time.Second)}, false},
		{"never heard", HostState{Status: "pending"}, HostState{Status: "pending", Address: addr}, false},
		{"this run's agent", before, HostState{Status: "online", Address: addr, LastHeartbeatAt: at(time.Microsecond)}, true},
		{"a new host's first registration", HostState{Status: "pending"}, HostState{Status: "online", Address: addr, LastHeartbeatAt: at(0)}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := tc.h.HeardFrom(addr, tc.before); got != tc.want {
				t.Errorf("HeardFrom = %v, want %v", got, tc.want)
			}
		})
	}
}
