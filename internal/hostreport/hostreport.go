// Package hostreport is what a host agent tells the control plane about its
// machine: its specs at registration, and its resources (inside the specs,
// and as the body of every heartbeat). Both sides use these types, so the JSON contract is written once.
package hostreport

import "fmt"

// Specs describe the machine an agent runs on, sent at registration.
type Specs struct {
	VMM      string `json:"vmm"`
	Accel    string `json:"accel"`
	Arch     string `json:"arch"`
	Version  string `json:"version"`
	CPUCount int32  `json:"cpu_count"`
	MemoryMB int64  `json:"memory_mb"`
	DiskGB   int64  `json:"disk_gb"`
	Resources
}

// Resources are what a host reports: the largest sandbox it accepts and
// what it has room for.
type Resources struct {
	Limits   Limits   `json:"limits"`
	Capacity Capacity `json:"capacity"`
}

// Limits bound one sandbox: the agent's own validation limits. 0 means not
// reported.
type Limits struct {
	MaxVCPUs    int32 `json:"max_vcpus"`
	MaxMemoryMB int32 `json:"max_memory_mb"`
	MaxDiskMB   int32 `json:"max_disk_mb"`
}

// Capacity is what the host offers all its sandboxes together, and what
// its starting and running sandboxes hold now (paused ones hold nothing).
type Capacity struct {
	VCPUs             int32 `json:"vcpus"`
	MemoryMB          int64 `json:"memory_mb"`
	CommittedVCPUs    int32 `json:"committed_vcpus"`
	CommittedMemoryMB int64 `json:"committed_memory_mb"`
}

// Check refuses negative numbers, naming the field (prefix is where the
// report sits in the body, e.g. "specs.").
func (r Resources) Check(prefix string) error {
	for _, f := range []struct {
		name string
		v    int64
	}{
		{"limits.max_vcpus", int64(r.Limits.MaxVCPUs)}, {"limits.max_memory_mb", int64(r.Limits.MaxMemoryMB)},
		{"limits.max_disk_mb", int64(r.Limits.MaxDiskMB)}, {"capacity.vcpus", int64(r.Capacity.VCPUs)},
		{"capacity.memory_mb", r.Capacity.MemoryMB}, {"capacity.committed_vcpus", int64(r.Capacity.CommittedVCPUs)},
		{"capacity.committed_memory_mb", r.Capacity.CommittedMemoryMB},
	} {
		if f.v < 0 {
			return &FieldError{Field: prefix + f.name, Message: fmt.Sprintf("%s%s must not be negative, got %d", prefix, f.name, f.v)}
		}
	}
	return nil
}

// FieldError names the field of a report that is wrong.
type FieldError struct {
	Field, Message string
}

func (e *FieldError) Error() string { return e.Message }
