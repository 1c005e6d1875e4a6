package devboot

import (
	"testing"
	"time"
)

// Only a heartbeat of this run's agent makes the host ready: the online
// status and heartbeat a previous run left in the database do not.
func TestHostStateHeardFrom(t *testing.T) {
	start := time.Date(2026, 12, 1, 11, 0, 0, 123456789, time.UTC)
	at := func(d time.Duration) *time.Time { t := start.Add(d); return &t }
	const addr = "127.0.0.1:40001"
	for _, tc := range []struct {
		name string
		h    HostState
		want bool
	}{
		{"left by the previous run", HostState{Status: "online", Address: "127.0.0.1:39999", LastHeartbeatAt: at(-time.Minute)}, false},
		{"previous run on the same port", HostState{Status: "online", Address: addr, LastHeartbeatAt: at(-time.Second)}, false},
		{"new heartbeat, old address", HostState{Status: "online", Address: "127.0.0.1:39999", LastHeartbeatAt: at(time.Second)}, false},
		{"not online", HostState{Status: "unreachable", Address: addr, LastHeartbeatAt: at(time.Second)}, false},
		{"never heard", HostState{Status: "pending", Address: addr}, false},
		{"this run's agent", HostState{Status: "online", Address: addr, LastHeartbeatAt: at(time.Second)}, true},
		{"same microsecond as the start", HostState{Status: "online", Address: addr, LastHeartbeatAt: at(-789 * time.Nanosecond)}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := tc.h.HeardFrom(addr, start); got != tc.want {
				t.Errorf("HeardFrom = %v, want %v", got, tc.want)
			}
		})
	}
}
