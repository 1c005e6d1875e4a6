package e2e

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// guestDirectAddr is where the agent itself reaches port of sandbox id
// (the slot's DNAT'ed address, from its state file), after checking that
// the address is the far end of a veth this test's agent made (named with
// its prefix): the benchmark sends traffic to nothing else.
func guestDirectAddr(b *testing.B, d benchDev, port int) string {
	b.Helper()
	raw, err := os.ReadFile(filepath.Join(d.wrennDir, "sandboxes", d.sandboxID, "state.json"))
	if err != nil {
		b.Fatal(err)
	}
	var st struct {
		Slot struct {
			EnvdAddr string `json:"envd_addr"`
		} `json:"slot"`
	}
	if err := json.Unmarshal(raw, &st); err != nil {
		b.Fatalf("state.json: %v", err)
	}
	ap, err := netip.ParseAddrPort(st.Slot.EnvdAddr)
	if err != nil {
		b.Fatalf("envd address %q: %v", st.Slot.EnvdAddr, err)
	}
	ifs, err := net.Interfaces()
	if err != nil {
		b.Fatal(err)
	}
	for _, ifc := range ifs {
		if !strings.HasPrefix(ifc.Name, d.prefix) {
			continue
		}
		addrs, _ := ifc.Addrs()
		for _, a := range addrs {
			if p, err := netip.ParsePrefix(a.String()); err == nil && p.Contains(ap.Addr()) {
				return netip.AddrPortFrom(ap.Addr(), uint16(port)).String()
			}
		}
	}
	b.Fatalf("guest address %s is on no interface named %s*: not sending to it", ap.Addr(), d.prefix)
	return ""
}

// BenchmarkSandboxProxy compares, in one run, the sandbox HTTP proxy
// (client → control plane → agent → guest, by Host header) with the
// agent's own direct path to the guest's port: a 64 MiB download's
// throughput and a small request's latency (busybox httpd in the guest).
func BenchmarkSandboxProxy(b *testing.B) {
	d := startBenchDev(b)
	key := newClient(d.base).withKey(d.apiKey)
	if r := key.sh(b, d.sandboxID, `mkdir -p /srv && echo small > /srv/small &&
head -c 1048576 /dev/urandom > /tmp/r && for i in $(seq 64); do cat /tmp/r; done > /srv/big && rm /tmp/r &&
busybox httpd -p 8080 -h /srv`); r.ExitCode != 0 {
		b.Fatalf("start httpd: %+v", r)
	}
	direct := "http://" + guestDirectAddr(b, d, 8080)
	paths := []struct {
		name string
		req  func(path string) *http.Request
	}{
		{"direct", func(path string) *http.Request {
			r, _ := http.NewRequest(http.MethodGet, direct+path, nil)
			return r
		}},
		{"proxy", func(path string) *http.Request {
			r, _ := http.NewRequest(http.MethodGet, d.base+path, nil)
			r.Host = proxyHost(d.sandboxID, 8080)
			r.Header.Set("X-API-Key", d.apiKey)
			return r
		}},
	}
	hc := &http.Client{Timeout: 5 * time.Minute, Transport: &http.Transport{MaxIdleConnsPerHost: 4}}
	defer hc.CloseIdleConnections()
	get := func(b *testing.B, r *http.Request) int64 {
		resp, err := hc.Do(r)
		if err != nil {
			b.Fatal(err)
		}
		n, err := io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if err != nil || resp.StatusCode != http.StatusOK {
			b.Fatalf("GET %s: %d, %v", r.URL.Path, resp.StatusCode, err)
		}
		return n
	}
	mbps := map[string]float64{}
	p50 := map[string]time.Duration{}
	for _, p := range paths {
		b.Run("download64MiB/"+p.name, func(b *testing.B) {
			b.SetBytes(64 << 20)
			start := time.Now()
			for b.Loop() {
				if n := get(b, p.req("/big")); n != 64<<20 {
					b.Fatalf("downloaded %d bytes", n)
				}
			}
			mbps[p.name] = float64(64<<20) * float64(b.N) / time.Since(start).Seconds() / 1e6
		})
	}
	for _, p := range paths {
		b.Run("small/"+p.name, func(b *testing.B) {
			var took []time.Duration
			for b.Loop() {
				t0 := time.Now()
				get(b, p.req("/small"))
				took = append(took, time.Since(t0))
			}
			slices.Sort(took)
			p50[p.name] = took[len(took)/2]
			b.ReportMetric(float64(p50[p.name].Microseconds())/1000, "p50-ms")
		})
	}
	if mbps["direct"] > 0 && p50["direct"] > 0 {
		fmt.Printf("sandbox proxy: 64 MiB download %.0f MB/s direct, %.0f MB/s through the proxy (%.2fx); small request p50 %.2f ms direct, %.2f ms through the proxy (+%.2f ms)\n",
			mbps["direct"], mbps["proxy"], mbps["proxy"]/mbps["direct"], benchMS(p50["direct"]), benchMS(p50["proxy"]), benchMS(p50["proxy"]-p50["direct"]))
	}
}
