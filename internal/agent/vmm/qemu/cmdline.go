package qemu

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	"github.com/wrenn-dev/wrenn/internal/agent/vmm"
)

// TCGLapicTimerPeriod presets the guest's local APIC timer period under TCG:
// QEMU's APIC bus runs at 1 GHz and the image kernel uses HZ=250, so one
// jiffy is 4,000,000 bus cycles (measured: calibration gives 3,999,995).
// The lapic_timer_period= parameter comes from the images package's kernel
// patch; it skips ~250 ms of PIT calibration per TCG boot.
const TCGLapicTimerPeriod = 4000000

// KernelParams are the inputs of the guest kernel command line.
type KernelParams struct {
	// GuestIP, Gateway and PrefixLen configure eth0 via the kernel's ip=
	// (IP_PNP), so the guest has its address before init runs. A zero
	// GuestIP leaves the network unconfigured.
	GuestIP   netip.Addr
	Gateway   netip.Addr
	PrefixLen int
	// Accel: under TCG the APIC timer calibration is skipped.
	Accel vmm.Accel
	// TSCKHz is passed as tsc_early_khz; 0 leaves it to the driver, which
	// always adds the host's value.
	TSCKHz int
	// Init is the guest's init (default /usr/bin/envd).
	Init string
	// Extra parameters appended as they are (no spaces inside one).
	Extra []string
}

// KernelCmdline builds the command line for the images package's kernel
// and the minimal template.
func KernelCmdline(p KernelParams) (string, error) {
	init := p.Init
	if init == "" {
		init = "/usr/bin/envd"
	}
	if strings.ContainsAny(init, " \t\n\"") {
		return "", fmt.Errorf("kernel cmdline: init %q contains spaces or quotes", init)
	}
	args := []string{"console=ttyS0", "root=/dev/vda", "rw", "rootfstype=ext4", "init=" + init, "panic=-1", "quiet"}
	if p.GuestIP.IsValid() {
		if !p.GuestIP.Is4() || !p.Gateway.Is4() {
			return "", fmt.Errorf("kernel cmdline: guest %v and gateway %v must both be IPv4", p.GuestIP, p.Gateway)
		}
		if p.PrefixLen < 1 || p.PrefixLen > 30 {
			return "", fmt.Errorf("kernel cmdline: prefix length %d out of range 1-30", p.PrefixLen)
		}
		pfx := netip.PrefixFrom(p.GuestIP, p.PrefixLen).Masked()
		if !pfx.Contains(p.Gateway) || p.Gateway == p.GuestIP {
			return "", fmt.Errorf("kernel cmdline: gateway %v not a different address in %v", p.Gateway, pfx)
		}
		mask := netMask(p.PrefixLen)
		// ip=client::gateway:netmask:hostname:device:autoconf
		args = append(args, fmt.Sprintf("ip=%s::%s:%s::eth0:off", p.GuestIP, p.Gateway, mask))
	} else if p.Gateway.IsValid() {
		return "", fmt.Errorf("kernel cmdline: gateway %v without a guest address", p.Gateway)
	}
	switch p.Accel {
	case vmm.AccelTCG:
		args = append(args, "lapic_timer_period="+strconv.Itoa(TCGLapicTimerPeriod))
	case vmm.AccelKVM, "":
	default:
		return "", fmt.Errorf("kernel cmdline: unknown accel %q", p.Accel)
	}
	if p.TSCKHz < 0 {
		return "", fmt.Errorf("kernel cmdline: negative TSC frequency %d", p.TSCKHz)
	}
	if p.TSCKHz > 0 {
		args = append(args, "tsc_early_khz="+strconv.Itoa(p.TSCKHz))
	}
	for _, e := range p.Extra {
		if e == "" || strings.ContainsAny(e, " \t\n") {
			return "", fmt.Errorf("kernel cmdline: bad extra parameter %q", e)
		}
		args = append(args, e)
	}
	return strings.Join(args, " "), nil
}

func netMask(bits int) string {
	m := uint32(0xffffffff) << (32 - bits)
	return fmt.Sprintf("%d.%d.%d.%d", m>>24, m>>16&0xff, m>>8&0xff, m&0xff)
}

// withTSC appends tsc_early_khz unless the command line has it already.
func withTSC(cmdline string, khz int) string {
	for _, f := range strings.Fields(cmdline) {
		if strings.HasPrefix(f, "tsc_early_khz=") {
			return cmdline
		}
	}
	if khz <= 0 {
		return cmdline
	}
	return strings.TrimSpace(cmdline + " tsc_early_khz=" + strconv.Itoa(khz))
}
