package qemu

import (
	"bufio"
	"context"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/wrenn-dev/wrenn/internal/agent/vmm"
)

func TestParseProcStat(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		want    procStat
		wantErr bool
	}{
		{"qemu", "1234 (qemu-system-x86) S 1 1234 1234 0 -1 4194560 100 0 0 0 150 25 0 0 20 0 3 0 987654 100000 2000 18446744073709551615 1 1 0 0 0 0 0 4096 0 0 0 0 17 1 0 0 0 0 0",
			procStat{State: 'S', UTime: 150, STime: 25, StartTime: 987654}, false},
		{"name with spaces and parens", "7 (a) b) (c) R 1 7 7 0 -1 0 0 0 0 0 3 4 0 0 20 0 1 0 42 0 0",
			procStat{State: 'R', UTime: 3, STime: 4, StartTime: 42}, false},
		{"truncated", "7 (x) S 1 2 3", procStat{}, true},
		{"no name", "7 x S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20", procStat{}, true},
		{"bad number", "7 (x) S 1 7 7 0 -1 0 0 0 0 0 zz 4 0 0 20 0 1 0 42 0 0", procStat{}, true},
		{"empty", "", procStat{}, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseProcStat([]byte(tc.in))
			if (err != nil) != tc.wantErr {
				t.Fatalf("err = %v, wantErr %v", err, tc.wantErr)
			}
			if err == nil && got != tc.want {
				t.Fatalf("got %+v, want %+v", got, tc.want)
			}
		})
	}
	// And the real thing.
	data, err := os.ReadFile("/proc/self/stat")
	if err != nil {
		t.Fatal(err)
	}
	if st, err := parseProcStat(data); err != nil || st.StartTime == 0 {
		t.Fatalf("own stat: %+v, %v", st, err)
	}
}

func TestParseVmRSS(t *testing.T) {
	tests := []struct {
		in      string
		want    uint64
		wantErr bool
	}{
		{"Name:\tqemu\nVmRSS:\t  117000 kB\nThreads:\t3\n", 117000 * 1024, false},
		{"Name:\tzombie\n", 0, true},
		{"VmRSS:\t12 MB\n", 0, true},
		{"VmRSS:\t-1 kB\n", 0, true},
		{"VmRSS:\t99999999999999999999 kB\n", 0, true},
	}
	for _, tc := range tests {
		got, err := parseVmRSS([]byte(tc.in))
		if (err != nil) != tc.wantErr || got != tc.want {
			t.Errorf("parseVmRSS(%q) = %d, %v; want %d, err %v", tc.in, got, err, tc.want, tc.wantErr)
		}
	}
}

func TestParseTSCKHz(t *testing.T) {
	tests := []struct {
		in      string
		want    int
		wantErr bool
	}{
		{"processor\t: 0\ncpu MHz\t\t: 2596.120\n", 2596120, false},
		{"cpu MHz : 3000\ncpu MHz : 1000\n", 3000000, false},
		{"processor: 0\n", 0, true},
		{"cpu MHz\t: fast\n", 0, true},
		{"cpu MHz\t: NaN\n", 0, true},
		{"cpu MHz\t: -5\n", 0, true},
	}
	for _, tc := range tests {
		got, err := parseTSCKHz([]byte(tc.in))
		if (err != nil) != tc.wantErr || got != tc.want {
			t.Errorf("parseTSCKHz(%q) = %d, %v; want %d, err %v", tc.in, got, err, tc.want, tc.wantErr)
		}
	}
	if khz, err := HostTSCKHz(); err != nil || khz < 1000 {
		t.Fatalf("HostTSCKHz = %d, %v", khz, err)
	}
}

func TestKernelCmdline(t *testing.T) {
	gw := netip.MustParseAddr("10.0.0.1")
	guest := netip.MustParseAddr("10.0.0.2")
	tests := []struct {
		name    string
		p       KernelParams
		want    string
		wantErr bool
	}{
		{"tap /30 under tcg", KernelParams{GuestIP: guest, Gateway: gw, PrefixLen: 30, Accel: vmm.AccelTCG, TSCKHz: 2596120},
			"console=ttyS0 root=/dev/vda rw rootfstype=ext4 init=/usr/bin/envd panic=-1 quiet ip=10.0.0.2::10.0.0.1:255.255.255.252::eth0:off lapic_timer_period=4000000 tsc_early_khz=2596120", false},
		{"kvm, no network", KernelParams{Accel: vmm.AccelKVM},
			"console=ttyS0 root=/dev/vda rw rootfstype=ext4 init=/usr/bin/envd panic=-1 quiet", false},
		{"extra and init", KernelParams{Init: "/sbin/init", Extra: []string{"loglevel=7"}},
			"console=ttyS0 root=/dev/vda rw rootfstype=ext4 init=/sbin/init panic=-1 quiet loglevel=7", false},
		{"gateway outside prefix", KernelParams{GuestIP: guest, Gateway: netip.MustParseAddr("10.0.1.1"), PrefixLen: 30}, "", true},
		{"gateway is guest", KernelParams{GuestIP: guest, Gateway: guest, PrefixLen: 30}, "", true},
		{"ipv6", KernelParams{GuestIP: netip.MustParseAddr("fd00::2"), Gateway: netip.MustParseAddr("fd00::1"), PrefixLen: 64}, "", true},
		{"prefix 0", KernelParams{GuestIP: guest, Gateway: gw, PrefixLen: 0}, "", true},
		{"gateway alone", KernelParams{Gateway: gw}, "", true},
		{"bad accel", KernelParams{Accel: "hvf"}, "", true},
		{"space in extra", KernelParams{Extra: []string{"a b"}}, "", true},
		{"space in init", KernelParams{Init: "/bin/sh -c x"}, "", true},
		{"negative tsc", KernelParams{TSCKHz: -1}, "", true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := KernelCmdline(tc.p)
			if (err != nil) != tc.wantErr {
				t.Fatalf("err = %v, wantErr %v", err, tc.wantErr)
			}
			if got != tc.want {
				t.Fatalf("got  %q\nwant %q", got, tc.want)
			}
		})
	}
}

func TestWithTSC(t *testing.T) {
	tests := []struct {
		in   string
		khz  int
		want string
	}{
		{"console=ttyS0", 1000, "console=ttyS0 tsc_early_khz=1000"},
		{"console=ttyS0 tsc_early_khz=5", 1000, "console=ttyS0 tsc_early_khz=5"},
		{"", 1000, "tsc_early_khz=1000"},
		{"quiet", 0, "quiet"},
	}
	for _, tc := range tests {
		if got := withTSC(tc.in, tc.khz); got != tc.want {
			t.Errorf("withTSC(%q, %d) = %q, want %q", tc.in, tc.khz, got, tc.want)
		}
	}
}

func TestParseQMPMessage(t *testing.T) {
	tests := []struct {
		in       string
		reply    bool
		event    string
		errClass string
		wantErr  bool
	}{
		{`{"QMP": {"version": {}, "capabilities": []}}`, false, "", "", false},
		{`{"return": {}, "id": 1}`, true, "", "", false},
		{`{"error": {"class": "GenericError", "desc": "nope"}, "id": 2}`, true, "", "GenericError", false},
		{`{"event": "STOP", "timestamp": {"seconds": 1, "microseconds": 2}}`, false, "STOP", "", false},
		{`{"something": 1}`, false, "", "", true},
		{`not json`, false, "", "", true},
		{``, false, "", "", true},
	}
	for _, tc := range tests {
		m, err := parseQMPMessage([]byte(tc.in))
		if (err != nil) != tc.wantErr {
			t.Errorf("%q: err = %v, wantErr %v", tc.in, err, tc.wantErr)
			continue
		}
		if err != nil {
			continue
		}
		if m.hasReply != tc.reply || m.Event != tc.event {
			t.Errorf("%q: reply %v event %q", tc.in, m.hasReply, m.Event)
		}
		if tc.errClass != "" && (m.Error == nil || m.Error.Class != tc.errClass) {
			t.Errorf("%q: error %+v", tc.in, m.Error)
		}
	}
}

// TestQMPClientAgainstServer drives the client against a scripted QMP
// server on a Unix socket: greeting, capabilities, an interleaved event, a
// stale reply with the wrong id, an error reply, and a long socket path.
func TestQMPClientAgainstServer(t *testing.T) {
	dir := t.TempDir()
	long := filepath.Join(dir, strings.Repeat("d", 90))
	if err := os.MkdirAll(long, 0o700); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(long, "qmp.sock")
	// Listen through /proc/self/fd too: the path is longer than sun_path.
	d, err := os.Open(long)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	ln, err := net.Listen("unix", "/proc/self/fd/"+itoa(int(d.Fd()))+"/qmp.sock")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		r := bufio.NewReader(c)
		w := func(s string) { _, _ = c.Write([]byte(s + "\r\n")) }
		w(`{"QMP": {"version": {"qemu": {"major": 7}}, "capabilities": []}}`)
		for {
			line, err := r.ReadString('\n')
			if err != nil {
				return
			}
			switch {
			case strings.Contains(line, `"qmp_capabilities"`):
				w(`{"return": {}, "id": 1}`)
			case strings.Contains(line, `"query-status"`):
				w(`{"event": "RESUME", "timestamp": {"seconds": 1, "microseconds": 0}}`)
				w(`{"return": {"status": "stale"}, "id": 999}`)
				w(`{"return": {"status": "running", "running": true}, "id": 2}`)
			case strings.Contains(line, `"bogus"`):
				w(`{"error": {"class": "CommandNotFound", "desc": "The command bogus has not been found"}, "id": 3}`)
			case strings.Contains(line, `"hang"`):
				// no reply
			}
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := dialQMP(ctx, sock, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.close()
	var st struct {
		Status string `json:"status"`
	}
	if err := c.execute(ctx, "query-status", nil, &st); err != nil || st.Status != "running" {
		t.Fatalf("query-status = %+v, %v", st, err)
	}
	err = c.execute(ctx, "bogus", nil, nil)
	var qe *QMPError
	if !asQMPError(err, &qe) || qe.Class != "CommandNotFound" {
		t.Fatalf("bogus: %v", err)
	}
	hctx, hcancel := context.WithTimeout(ctx, 100*time.Millisecond)
	defer hcancel()
	if err := c.execute(hctx, "hang", nil, nil); err == nil {
		t.Fatal("hang returned without error")
	}
}
