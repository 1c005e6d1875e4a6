package httpapi

import (
	"bufio"
	"fmt"
	"net/http"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Metrics is the body of GET /metrics (field names from E2B's envd.yaml).
type Metrics struct {
	TS         int64   `json:"ts"`
	CPUCount   int     `json:"cpu_count"`
	CPUUsedPct float64 `json:"cpu_used_pct"`
	MemTotal   uint64  `json:"mem_total"`
	MemUsed    uint64  `json:"mem_used"`
	DiskUsed   uint64  `json:"disk_used"`
	DiskTotal  uint64  `json:"disk_total"`
}

// metricsSampler computes CPU use between two calls (the first call
// samples over a short window).
type metricsSampler struct {
	disk string

	mu         sync.Mutex
	prevBusy   uint64
	prevTotal  uint64
	havePrev   bool
	prevSample time.Time
}

func newMetricsSampler(disk string) *metricsSampler { return &metricsSampler{disk: disk} }

func readCPU() (busy, total uint64, err error) {
	f, err := os.Open("/proc/stat")
	if err != nil {
		return 0, 0, fmt.Errorf("open /proc/stat: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	if !sc.Scan() {
		return 0, 0, fmt.Errorf("read /proc/stat: empty")
	}
	fields := strings.Fields(sc.Text())
	if len(fields) < 5 || fields[0] != "cpu" {
		return 0, 0, fmt.Errorf("read /proc/stat: unexpected first line")
	}
	for i, f := range fields[1:] {
		n, err := strconv.ParseUint(f, 10, 64)
		if err != nil {
			return 0, 0, fmt.Errorf("parse /proc/stat: %w", err)
		}
		total += n
		if i != 3 && i != 4 { // idle, iowait
			busy += n
		}
	}
	return busy, total, nil
}

func (s *metricsSampler) cpuPct() (float64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.havePrev || time.Since(s.prevSample) > time.Minute {
		b, t, err := readCPU()
		if err != nil {
			return 0, err
		}
		s.prevBusy, s.prevTotal = b, t
		time.Sleep(100 * time.Millisecond)
	}
	b, t, err := readCPU()
	if err != nil {
		return 0, err
	}
	var pct float64
	if dt := t - s.prevTotal; t > s.prevTotal && dt > 0 {
		pct = 100 * float64(b-s.prevBusy) / float64(dt)
	}
	s.prevBusy, s.prevTotal, s.havePrev, s.prevSample = b, t, true, time.Now()
	return pct, nil
}

func readMem() (total, used uint64, err error) {
	f, err := os.Open("/proc/meminfo")
	if err != nil {
		return 0, 0, fmt.Errorf("open /proc/meminfo: %w", err)
	}
	defer f.Close()
	var avail uint64
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 2 {
			continue
		}
		n, _ := strconv.ParseUint(fields[1], 10, 64)
		switch fields[0] {
		case "MemTotal:":
			total = n * 1024
		case "MemAvailable:":
			avail = n * 1024
		}
	}
	if total < avail {
		return total, 0, nil
	}
	return total, total - avail, nil
}

func (s *metricsSampler) sample() (Metrics, error) {
	m := Metrics{TS: time.Now().Unix(), CPUCount: runtime.NumCPU()}
	var err error
	if m.CPUUsedPct, err = s.cpuPct(); err != nil {
		return m, err
	}
	if m.MemTotal, m.MemUsed, err = readMem(); err != nil {
		return m, err
	}
	var fs unix.Statfs_t
	if err := unix.Statfs(s.disk, &fs); err != nil {
		return m, fmt.Errorf("statfs %s: %w", s.disk, err)
	}
	m.DiskTotal = fs.Blocks * uint64(fs.Bsize)
	m.DiskUsed = (fs.Blocks - fs.Bfree) * uint64(fs.Bsize)
	return m, nil
}

func (a *API) getMetrics(w http.ResponseWriter, r *http.Request) {
	m, err := a.metrics.sample()
	if err != nil {
		writeError(w, http.StatusInternalServerError, err.Error())
		return
	}
	writeJSON(w, http.StatusOK, m)
}
