package events

import "testing"

func TestFilters(t *testing.T) {
	for _, tc := range []struct {
		filter string
		valid  bool
		// matches lists types the filter passes; misses those it does not.
		matches, misses []string
	}{
		{"*", true, []string{"sandbox.created", "host.marked_down"}, nil},
		{"sandbox.*", true, []string{"sandbox.created", "sandbox.auto_paused"}, []string{"snapshot.created", "host.created"}},
		{"sandbox.paused", true, []string{"sandbox.paused"}, []string{"sandbox.auto_paused", "sandbox.pausedx"}},
		{"channel.test", true, []string{"channel.test"}, nil},
		{"sandbox.exploded", false, nil, nil},
		{"rocket.*", false, nil, nil},
		{"sandbox", false, nil, []string{"sandbox.created"}},
		{"", false, nil, nil},
		{"sand*", false, nil, nil},
	} {
		t.Run(tc.filter, func(t *testing.T) {
			if got := ValidFilter(tc.filter); got != tc.valid {
				t.Fatalf("ValidFilter(%q) = %v, want %v", tc.filter, got, tc.valid)
			}
			for _, typ := range tc.matches {
				if !Matches([]string{tc.filter}, typ) {
					t.Errorf("%q does not match %q", tc.filter, typ)
				}
			}
			for _, typ := range tc.misses {
				if Matches([]string{tc.filter}, typ) {
					t.Errorf("%q matches %q", tc.filter, typ)
				}
			}
		})
	}
}

func TestDecode(t *testing.T) {
	for _, tc := range []struct {
		raw string
		ok  bool
	}{
		{`{"id":"evt-1","type":"sandbox.created","occurred_at":"2026-12-01T12:00:00.123456789Z","team_id":"team-a","actor":{"type":"user","id":"usr-1","name":"a"},"resource":{"type":"sandbox","id":"sb-1"},"status":"success","data":{"x":1}}`, true},
		{`{"id":"evt-1"}`, false},
		{`{"type":"sandbox.created"}`, false},
		{`not json`, false},
		{``, false},
	} {
		e, err := Decode(tc.raw)
		if (err == nil) != tc.ok {
			t.Fatalf("Decode(%q) err = %v, want ok=%v", tc.raw, err, tc.ok)
		}
		if tc.ok && (e.OccurredAt.Nanosecond() != 123456789 || e.Actor.Type != "user" || e.Resource.ID != "sb-1" || string(e.Data) != `{"x":1}`) {
			t.Fatalf("decoded %+v", e)
		}
	}
}
