package qemu

import (
	"errors"
	"strconv"
	"testing"
)

func itoa(i int) string { return strconv.Itoa(i) }

func asQMPError(err error, target **QMPError) bool { return errors.As(err, target) }

func FuzzParseProcStat(f *testing.F) {
	f.Add([]byte("1234 (qemu-system-x86) S 1 1234 1234 0 -1 4194560 100 0 0 0 150 25 0 0 20 0 3 0 987654 100000 2000"))
	f.Add([]byte("7 (a) b) (c) R 1 7 7 0 -1 0 0 0 0 0 3 4 0 0 20 0 1 0 42 0 0"))
	f.Add([]byte(")("))
	f.Fuzz(func(t *testing.T, data []byte) {
		st, err := parseProcStat(data)
		if err == nil && st.State == 0 {
			t.Fatalf("accepted %q without a state", data)
		}
	})
}

func FuzzParseVmRSS(f *testing.F) {
	f.Add([]byte("VmRSS:\t  117000 kB\n"))
	f.Add([]byte("VmRSS:\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		_, _ = parseVmRSS(data)
	})
}

func FuzzParseTSCKHz(f *testing.F) {
	f.Add([]byte("cpu MHz\t\t: 2596.120\n"))
	f.Add([]byte("cpu MHz: 1e308\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		khz, err := parseTSCKHz(data)
		if err == nil && (khz < 1000 || khz > 100000000) {
			t.Fatalf("accepted implausible %d kHz from %q", khz, data)
		}
	})
}

func FuzzParseQMPMessage(f *testing.F) {
	f.Add([]byte(`{"return": {}, "id": 1}`))
	f.Add([]byte(`{"error": {"class": "GenericError", "desc": "x"}}`))
	f.Add([]byte(`{"event": "STOP"}`))
	f.Add([]byte(`{"QMP": {}}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := parseQMPMessage(data)
		if err == nil && !m.hasReply && m.Event == "" && m.QMP == nil {
			t.Fatalf("accepted %q as nothing", data)
		}
	})
}

func FuzzParseState(f *testing.F) {
	f.Add([]byte(`{"id":"sb-1","pid":1234,"start_time":99,"accel":"tcg","vcpus":1,"memory_mb":256}`))
	f.Add([]byte(`{"pid":1}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		st, err := parseState(data)
		if err == nil && (st.PID <= 1 || st.StartTime == 0) {
			t.Fatalf("accepted %+v", st)
		}
	})
}
