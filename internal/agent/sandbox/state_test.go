package sandbox

import (
	"encoding/json"
	"strings"
	"testing"

	pb "github.com/wrenn-dev/wrenn/proto/hostagent/v1"
)

// Every state survives a write and a read, and is written by name.
func TestRecordStateRoundTrip(t *testing.T) {
	for n := range pb.SandboxState_name {
		st := pb.SandboxState(n)
		t.Run(st.String(), func(t *testing.T) {
			in := record{ID: "sb-1", State: st, StateSeq: 7, VCPUs: 2, Slot: NetSlot{Name: "ns-1"}}
			b, err := json.Marshal(in)
			if err != nil {
				t.Fatal(err)
			}
			var raw map[string]any
			if err := json.Unmarshal(b, &raw); err != nil {
				t.Fatal(err)
			}
			if raw["state"] != stateName(st) {
				t.Fatalf("state written as %#v, want %q", raw["state"], stateName(st))
			}
			var out record
			if err := json.Unmarshal(b, &out); err != nil {
				t.Fatal(err)
			}
			if out.State != st || out.ID != in.ID || out.StateSeq != in.StateSeq || out.VCPUs != in.VCPUs || out.Slot.Name != in.Slot.Name {
				t.Fatalf("read back %+v, want %+v", out, in)
			}
		})
	}
}

// parseState reads names, the numbers older agents wrote, and nothing else.
func TestParseState(t *testing.T) {
	tests := []struct {
		raw     string
		want    pb.SandboxState
		wantErr string
	}{
		{raw: `"running"`, want: pb.SandboxState_SANDBOX_STATE_RUNNING},
		{raw: `"auto_paused"`, want: pb.SandboxState_SANDBOX_STATE_AUTO_PAUSED},
		{raw: `"PAUSED"`, want: pb.SandboxState_SANDBOX_STATE_PAUSED},
		{raw: `"dead"`, want: pb.SandboxState_SANDBOX_STATE_DEAD},
		// Agents before names wrote the proto enum's number.
		{raw: `2`, want: pb.SandboxState_SANDBOX_STATE_RUNNING},
		{raw: `1`, want: pb.SandboxState_SANDBOX_STATE_STARTING},
		{raw: `0`, want: pb.SandboxState_SANDBOX_STATE_UNSPECIFIED},
		{raw: ``, want: pb.SandboxState_SANDBOX_STATE_UNSPECIFIED},
		{raw: `null`, want: pb.SandboxState_SANDBOX_STATE_UNSPECIFIED},
		{raw: `99`, wantErr: "unknown sandbox state 99"},
		{raw: `-1`, wantErr: "unknown sandbox state -1"},
		{raw: `"sleeping"`, wantErr: `unknown sandbox state "sleeping"`},
		{raw: `""`, wantErr: `unknown sandbox state ""`},
		{raw: `2.5`, wantErr: "neither a name nor a number"},
		{raw: `{}`, wantErr: "neither a name nor a number"},
	}
	for _, tt := range tests {
		t.Run(tt.raw, func(t *testing.T) {
			got, err := parseState(json.RawMessage(tt.raw))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("= %v, %v; want %v", got, err, tt.want)
			}
		})
	}
}

// A whole state.json as an agent before names wrote it still reads.
func TestReadLegacyRecord(t *testing.T) {
	legacy := `{"id":"sb-old","template":"minimal","state":3,"state_seq":41,"vcpus":1,"memory_mb":256,
		"snapshot":{"dir":"/var/lib/wrenn/snapshots/sb-old","state_path":"/var/lib/wrenn/snapshots/sb-old/state"}}`
	var r record
	if err := json.Unmarshal([]byte(legacy), &r); err != nil {
		t.Fatal(err)
	}
	if r.State != pb.SandboxState_SANDBOX_STATE_PAUSED || r.StateSeq != 41 || r.Snapshot == nil || r.Snapshot.Dir != "/var/lib/wrenn/snapshots/sb-old" {
		t.Fatalf("read %+v", r)
	}
	b, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), `"state":"paused"`) {
		t.Fatalf("rewritten as %s, want the state by name", b)
	}
}
