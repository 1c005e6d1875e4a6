package config

import (
	"net"
	"net/netip"
	"strconv"
	"strings"
	"time"
)

// Agent configures `wrenn agent`.
type Agent struct {
	// ListenAddr is where the agent's Connect RPC server listens.
	ListenAddr string
	// InsecureListen lets an agent without mTLS (its control plane has no
	// CA) listen beyond loopback; without it such an agent binds loopback
	// only.
	InsecureListen bool
	// Dir holds images, templates, sandboxes' disks, snapshots and state.
	Dir string
	// VMM is auto, firecracker or qemu.
	VMM string
	// Accel is auto, kvm or tcg.
	Accel string
	// MaxVCPUs, MaxMemoryMB and MaxDiskMB bound one sandbox's size.
	MaxVCPUs    int
	MaxMemoryMB int
	MaxDiskMB   int
	// CapacityVCPUs and CapacityMemoryMB are what the host offers all its
	// sandboxes together (0: every CPU and all of MemTotal); the control
	// plane admits sandboxes against them.
	CapacityVCPUs    int
	CapacityMemoryMB int
	// NetPrefix starts the names of every network namespace, link and nft
	// table the agent creates (stale ones with it are removed at start);
	// NetRange is the IPv4 range cut into one /30 per sandbox. Two agents
	// on one machine need different values of both.
	NetPrefix string
	NetRange  string
	Log       Log
	// Metrics is the agent's Prometheus endpoint
	// (WRENN_AGENT_METRICS_LISTEN_ADDR, WRENN_METRICS_TOKEN).
	Metrics Metrics
	// Registration with a control plane; no CPURLs runs standalone.
	Registration AgentRegistration
}

// AgentRegistration configures joining a control plane.
type AgentRegistration struct {
	// CPURLs are the control plane's URLs, tried in order with failover
	// (WRENN_CP_URL comma-separated, --cp-url repeatable): every replica,
	// or one load balancer.
	CPURLs []string
	// Token is a one-time registration token (--register); when set the
	// agent registers before serving.
	Token string
	// Address is the host:port the control plane dials (--address).
	Address string
	// HeartbeatInterval is the time between heartbeats.
	HeartbeatInterval time.Duration
	// PauseAfter is how long the control plane may stay unreachable before
	// every sandbox is paused.
	PauseAfter time.Duration
}

// LoadAgent reads the host agent's configuration.
func LoadAgent(get Getenv) (Agent, error) {
	r := &reader{get: get}
	a := Agent{
		ListenAddr:       r.listenAddr("WRENN_AGENT_LISTEN_ADDR", ":9090"),
		InsecureListen:   r.boolean("WRENN_AGENT_INSECURE_LISTEN", false),
		Dir:              r.str("WRENN_DIR", "/var/lib/wrenn"),
		VMM:              r.oneOf("WRENN_VMM", "auto", "auto", "firecracker", "qemu"),
		Accel:            r.oneOf("WRENN_ACCEL", "auto", "auto", "kvm", "tcg"),
		MaxVCPUs:         r.integer("WRENN_MAX_VCPUS", 4, 1, 64),
		MaxMemoryMB:      r.integer("WRENN_MAX_MEMORY_MB", 4096, 128, 1<<20),
		MaxDiskMB:        r.integer("WRENN_MAX_DISK_MB", 20480, 256, 1<<22),
		CapacityVCPUs:    r.integer("WRENN_CAPACITY_VCPUS", 0, 0, 1<<16),
		CapacityMemoryMB: r.integer("WRENN_CAPACITY_MEMORY_MB", 0, 0, 1<<32),
		NetPrefix:        r.str("WRENN_NET_PREFIX", "wrn-"),
		NetRange:         r.str("WRENN_NET_RANGE", "10.200.0.0/16"),
		Log:              loadLog(r),
		Metrics:          loadMetrics(r, "WRENN_AGENT_METRICS_LISTEN_ADDR"),
	}
	if !validNetPrefix(a.NetPrefix) {
		r.fail("WRENN_NET_PREFIX", "must be 1-8 of a-z, 0-9 and '-', got %q", a.NetPrefix)
	}
	if p, err := netip.ParsePrefix(a.NetRange); err != nil || !p.Addr().Is4() || p.Bits() > 29 || p.Masked() != p {
		r.fail("WRENN_NET_RANGE", "must be an IPv4 network of /29 or larger such as 10.200.0.0/16, got %q", a.NetRange)
	}
	a.Registration = AgentRegistration{
		CPURLs:            splitList(r.str("WRENN_CP_URL", "")),
		Token:             r.str("WRENN_REGISTER_TOKEN", ""),
		Address:           r.str("WRENN_AGENT_ADDRESS", ""),
		HeartbeatInterval: r.duration("WRENN_HEARTBEAT_INTERVAL", 30*time.Second, 100*time.Millisecond),
		PauseAfter:        r.duration("WRENN_CP_UNREACHABLE_PAUSE_AFTER", 5*time.Minute, time.Second),
	}
	for _, u := range a.Registration.CPURLs {
		r.urlWithScheme("WRENN_CP_URL", u, "http", "https")
	}
	if a.Registration.Token != "" && (len(a.Registration.CPURLs) == 0 || a.Registration.Address == "") {
		r.fail("WRENN_REGISTER_TOKEN", "registering needs WRENN_CP_URL (--cp-url) and WRENN_AGENT_ADDRESS (--address) too")
	}
	if a.Registration.Address != "" {
		r.hostPort("WRENN_AGENT_ADDRESS", a.Registration.Address)
	}
	if a.Dir != "" && a.Dir[0] != '/' {
		r.fail("WRENN_DIR", "must be an absolute path, got %q", a.Dir)
	}
	return a, r.err()
}

// splitList splits a comma-separated value, dropping blanks.
func splitList(v string) []string {
	var out []string
	for p := range strings.SplitSeq(v, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

// hostPort checks a host:port with a non-empty host and a port 1-65535.
func (r *reader) hostPort(name, v string) {
	host, port, err := net.SplitHostPort(v)
	p, perr := strconv.Atoi(port)
	if err != nil || host == "" || perr != nil || p < 1 || p > 65535 {
		r.fail(name, "must be host:port with a port 1-65535, got %q", v)
	}
}

func validNetPrefix(p string) bool {
	if p == "" || len(p) > 8 {
		return false
	}
	for _, c := range p {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}
