package firecracker

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

// clockTicks is USER_HZ, the unit of /proc/PID/stat times. Linux fixes it
// at 100 on every architecture the agent runs on.
const clockTicks = 100

// procStat is the part of /proc/PID/stat the driver uses.
type procStat struct {
	State     byte
	UTime     uint64 // clock ticks
	STime     uint64 // clock ticks
	StartTime uint64 // clock ticks since boot; identifies the process with its PID
	RSSPages  int64
}

func (s procStat) cpuTime() time.Duration {
	return time.Duration(s.UTime+s.STime) * time.Second / clockTicks
}

var errBadStat = errors.New("malformed /proc stat line")

// parseProcStat parses one /proc/PID/stat line. The command name (field 2)
// may hold spaces and parentheses, so fields are counted from the last ')'.
func parseProcStat(line []byte) (procStat, error) {
	end := bytes.LastIndexByte(line, ')')
	if end < 0 || bytes.IndexByte(line, '(') < 0 || bytes.IndexByte(line, '(') > end {
		return procStat{}, errBadStat
	}
	fields := strings.Fields(string(line[end+1:]))
	// fields[0] is field 3 (state); field N is fields[N-3].
	const need = 24 - 3 + 1
	if len(fields) < need || len(fields[0]) != 1 {
		return procStat{}, errBadStat
	}
	var st procStat
	st.State = fields[0][0]
	var err error
	if st.UTime, err = strconv.ParseUint(fields[14-3], 10, 64); err != nil {
		return procStat{}, fmt.Errorf("%w: utime: %v", errBadStat, err)
	}
	if st.STime, err = strconv.ParseUint(fields[15-3], 10, 64); err != nil {
		return procStat{}, fmt.Errorf("%w: stime: %v", errBadStat, err)
	}
	if st.StartTime, err = strconv.ParseUint(fields[22-3], 10, 64); err != nil {
		return procStat{}, fmt.Errorf("%w: starttime: %v", errBadStat, err)
	}
	if st.RSSPages, err = strconv.ParseInt(fields[24-3], 10, 64); err != nil {
		return procStat{}, fmt.Errorf("%w: rss: %v", errBadStat, err)
	}
	return st, nil
}

func readProcStat(pid int) (procStat, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return procStat{}, err
	}
	st, err := parseProcStat(b)
	if err != nil {
		return procStat{}, fmt.Errorf("/proc/%d/stat: %w", pid, err)
	}
	return st, nil
}
