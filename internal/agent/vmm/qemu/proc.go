package qemu

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"math"
	"os"
	"strconv"
	"strings"
	"time"
)

// userHZ is the unit of /proc/PID/stat times; fixed at 100 in the Linux ABI.
const userHZ = 100

// procStat holds the fields of /proc/PID/stat the driver uses.
type procStat struct {
	State     byte
	UTime     uint64 // clock ticks
	STime     uint64
	StartTime uint64 // clock ticks after boot; identifies the process with its PID
}

// parseProcStat parses /proc/PID/stat. The command name (field 2) may hold
// spaces and parentheses, so fields are counted from its last ')'.
func parseProcStat(data []byte) (procStat, error) {
	var st procStat
	end := bytes.LastIndexByte(data, ')')
	if end < 0 || bytes.IndexByte(data, '(') < 0 {
		return st, errors.New("proc stat: no command name")
	}
	fields := strings.Fields(string(data[end+1:]))
	// fields[0] is field 3 (state); utime is 14, stime 15, starttime 22.
	if len(fields) < 20 {
		return st, fmt.Errorf("proc stat: %d fields after the name, want at least 20", len(fields))
	}
	if len(fields[0]) != 1 {
		return st, fmt.Errorf("proc stat: bad state %q", fields[0])
	}
	st.State = fields[0][0]
	var err error
	if st.UTime, err = strconv.ParseUint(fields[11], 10, 64); err != nil {
		return st, fmt.Errorf("proc stat: utime: %w", err)
	}
	if st.STime, err = strconv.ParseUint(fields[12], 10, 64); err != nil {
		return st, fmt.Errorf("proc stat: stime: %w", err)
	}
	if st.StartTime, err = strconv.ParseUint(fields[19], 10, 64); err != nil {
		return st, fmt.Errorf("proc stat: starttime: %w", err)
	}
	return st, nil
}

func readProcStat(pid int) (procStat, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return procStat{}, err
	}
	return parseProcStat(data)
}

// cpuTime converts clock ticks to a duration without overflowing.
func cpuTime(ticks uint64) time.Duration {
	const perTick = uint64(time.Second / userHZ)
	if ticks > math.MaxInt64/perTick {
		return time.Duration(math.MaxInt64)
	}
	return time.Duration(ticks * perTick)
}

// parseVmRSS returns VmRSS from /proc/PID/status, in bytes.
func parseVmRSS(data []byte) (uint64, error) {
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		line := sc.Text()
		rest, ok := strings.CutPrefix(line, "VmRSS:")
		if !ok {
			continue
		}
		f := strings.Fields(rest)
		if len(f) != 2 || f[1] != "kB" {
			return 0, fmt.Errorf("proc status: bad VmRSS line %q", line)
		}
		kb, err := strconv.ParseUint(f[0], 10, 64)
		if err != nil || kb > math.MaxUint64/1024 {
			return 0, fmt.Errorf("proc status: bad VmRSS value %q", f[0])
		}
		return kb * 1024, nil
	}
	return 0, errors.New("proc status: no VmRSS (zombie or kernel thread?)")
}

// parseTSCKHz reads the host TSC frequency from /proc/cpuinfo's first
// "cpu MHz" line. Passing it as tsc_early_khz avoids guests that hang at
// "tsc: Marking TSC unstable" under TCG.
func parseTSCKHz(cpuinfo []byte) (int, error) {
	sc := bufio.NewScanner(bytes.NewReader(cpuinfo))
	for sc.Scan() {
		key, val, ok := strings.Cut(sc.Text(), ":")
		if !ok || strings.TrimSpace(key) != "cpu MHz" {
			continue
		}
		mhz, err := strconv.ParseFloat(strings.TrimSpace(val), 64)
		if err != nil || math.IsNaN(mhz) || mhz < 1 || mhz > 100000 {
			return 0, fmt.Errorf("cpuinfo: bad cpu MHz %q", strings.TrimSpace(val))
		}
		return int(math.Round(mhz * 1000)), nil
	}
	return 0, errors.New("cpuinfo: no \"cpu MHz\" line")
}

// HostTSCKHz returns the host's TSC frequency in kHz.
func HostTSCKHz() (int, error) {
	data, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return 0, fmt.Errorf("read cpuinfo: %w", err)
	}
	return parseTSCKHz(data)
}
