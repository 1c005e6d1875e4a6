package config

// Agent configures `wrenn agent`.
type Agent struct {
	// ListenAddr is where the agent's Connect RPC server listens.
	ListenAddr string
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
	Log         Log
}

// LoadAgent reads the host agent's configuration.
func LoadAgent(get Getenv) (Agent, error) {
	r := &reader{get: get}
	a := Agent{
		ListenAddr:  r.listenAddr("WRENN_AGENT_LISTEN_ADDR", ":9090"),
		Dir:         r.str("WRENN_DIR", "/var/lib/wrenn"),
		VMM:         r.oneOf("WRENN_VMM", "auto", "auto", "firecracker", "qemu"),
		Accel:       r.oneOf("WRENN_ACCEL", "auto", "auto", "kvm", "tcg"),
		MaxVCPUs:    r.integer("WRENN_MAX_VCPUS", 4, 1, 64),
		MaxMemoryMB: r.integer("WRENN_MAX_MEMORY_MB", 4096, 128, 1<<20),
		MaxDiskMB:   r.integer("WRENN_MAX_DISK_MB", 20480, 256, 1<<22),
		Log:         loadLog(r),
	}
	if a.Dir != "" && a.Dir[0] != '/' {
		r.fail("WRENN_DIR", "must be an absolute path, got %q", a.Dir)
	}
	return a, r.err()
}
