package firecracker

import (
	"encoding/json"
	"os"
	"strings"
	"testing"
	"time"
)

func TestParseProcStat(t *testing.T) {
	// Field layout per proc(5); comm may hold spaces and parentheses.
	tail := " S 1 2 3 4 5 6 7 8 9 10 250 50 13 14 15 16 17 18 424242 20 300 22 23"
	cases := []struct {
		name    string
		line    string
		wantErr bool
		want    procStat
	}{
		{"plain", "123 (firecracker)" + tail, false, procStat{State: 'S', UTime: 250, STime: 50, StartTime: 424242, RSSPages: 300}},
		{"comm with spaces and parens", "123 (fc (vm) 1)" + tail, false, procStat{State: 'S', UTime: 250, STime: 50, StartTime: 424242, RSSPages: 300}},
		{"truncated", "123 (fc) S 1 2 3", true, procStat{}},
		{"no parens", "123 fc" + tail, true, procStat{}},
		{"bad utime", "123 (fc) S 1 2 3 4 5 6 7 8 9 10 x 50 13 14 15 16 17 18 1 20 300 22 23", true, procStat{}},
		{"empty", "", true, procStat{}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseProcStat([]byte(tc.line))
			if (err != nil) != tc.wantErr {
				t.Fatalf("err = %v, wantErr %v", err, tc.wantErr)
			}
			if got != tc.want {
				t.Fatalf("got %+v, want %+v", got, tc.want)
			}
		})
	}
	if d := (procStat{UTime: 250, STime: 50}).cpuTime(); d != 3*time.Second {
		t.Fatalf("cpuTime = %v, want 3s", d)
	}
	// And the real thing.
	self, err := readProcStat(os.Getpid())
	if err != nil || self.StartTime == 0 || self.RSSPages <= 0 {
		t.Fatalf("own stat: %+v %v", self, err)
	}
}

func FuzzParseProcStat(f *testing.F) {
	f.Add([]byte("1 (init) S 0 1 1 0 -1 4194560 1 2 3 4 5 6 7 8 20 0 1 0 10 1000 50 18446744073709551615"))
	f.Add([]byte("99 (a) b) R 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23"))
	f.Add([]byte(")("))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, line []byte) {
		st, err := parseProcStat(line)
		if err != nil {
			return
		}
		if st.State == 0 {
			t.Fatalf("parsed without a state: %q", line)
		}
	})
}

func TestParseFault(t *testing.T) {
	cases := []struct{ body, want string }{
		{`{"fault_message":"The kernel file cannot be opened"}`, "The kernel file cannot be opened"},
		{`{"fault_message":""}`, ""},
		{`not json`, "not json"},
		{`{"other":1}`, `{"other":1}`},
		{"", ""},
		{strings.Repeat("x", 600), strings.Repeat("x", 512) + "..."},
	}
	for _, tc := range cases {
		if got := parseFault([]byte(tc.body)); got != tc.want {
			t.Errorf("parseFault(%.40q) = %.40q, want %.40q", tc.body, got, tc.want)
		}
	}
	e := &APIError{Method: "PUT", Path: "/actions", Status: 400, FaultMessage: "boom"}
	if e.Error() != "firecracker API PUT /actions: HTTP 400: boom" {
		t.Errorf("APIError text = %q", e.Error())
	}
}

func FuzzParseFault(f *testing.F) {
	f.Add([]byte(`{"fault_message":"x"}`))
	f.Add([]byte(`{"fault_message":null}`))
	f.Add([]byte(`[]`))
	f.Add([]byte("\xff\xfe"))
	f.Fuzz(func(t *testing.T, body []byte) {
		got := parseFault(body)
		var fm struct {
			FaultMessage *string `json:"fault_message"`
		}
		if json.Unmarshal(body, &fm) == nil && fm.FaultMessage != nil && got != *fm.FaultMessage {
			t.Fatalf("fault_message %q lost: got %q", *fm.FaultMessage, got)
		}
		if len(got) > 512+3 && !(json.Unmarshal(body, &fm) == nil && fm.FaultMessage != nil) {
			t.Fatalf("unbounded non-JSON fault text (%d bytes)", len(got))
		}
	})
}

func TestInstanceID(t *testing.T) {
	cases := []struct{ in, want string }{
		{"sbx-abc123", "sbx-abc123"},
		{"a_b.c/d", "a-b-c-d"},
		{"", ""},
		{strings.Repeat("x", 80), strings.Repeat("x", 64)},
		{"é", "-"},
	}
	for _, tc := range cases {
		if got := instanceID(tc.in); got != tc.want {
			t.Errorf("instanceID(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}
