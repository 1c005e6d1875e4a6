// Package pid1 holds what envd does when it runs as the VM's init process:
// mounting the pseudo filesystems, naming the host, bringing the network up
// from the kernel command line, and powering off.
package pid1

import (
	"fmt"
	"net"
	"strings"
)

// IPConfig is the parsed kernel "ip=" argument:
// ip=<client-ip>:<server-ip>:<gw-ip>:<netmask>:<hostname>:<device>:<autoconf>[:<dns0>:<dns1>:<ntp0>]
type IPConfig struct {
	ClientIP net.IP
	ServerIP net.IP
	Gateway  net.IP
	Netmask  net.IPMask
	Hostname string
	Device   string
	Autoconf string
	DNS      []net.IP
}

// Cmdline is the subset of the kernel command line envd cares about.
type Cmdline struct {
	// IP is nil when there is no static "ip=" argument.
	IP *IPConfig
	// Hostname from wrenn.hostname=, which wins over the one in ip=.
	Hostname string
	// DNS servers from wrenn.dns= (comma separated). Only these are ever
	// written to resolv.conf: envd never invents a public resolver.
	DNS []net.IP
}

// ParseCmdline parses /proc/cmdline content. Unknown arguments are ignored;
// malformed ones that envd needs give an error.
func ParseCmdline(s string) (Cmdline, error) {
	var c Cmdline
	for _, f := range strings.Fields(s) {
		k, v, _ := strings.Cut(f, "=")
		switch k {
		case "ip":
			ip, err := ParseIPArg(v)
			if err != nil {
				return Cmdline{}, err
			}
			c.IP = ip
		case "wrenn.hostname":
			if !validHostname(v) {
				return Cmdline{}, fmt.Errorf("wrenn.hostname=%q: invalid hostname", v)
			}
			c.Hostname = v
		case "wrenn.dns":
			for _, d := range strings.Split(v, ",") {
				if d == "" {
					continue
				}
				ip := net.ParseIP(d)
				if ip == nil {
					return Cmdline{}, fmt.Errorf("wrenn.dns=%q: %q is not an IP address", v, d)
				}
				c.DNS = append(c.DNS, ip)
			}
		}
	}
	return c, nil
}

// ParseIPArg parses the value of the kernel "ip=" argument. It returns nil,
// nil for the forms that carry no static configuration (off, none, dhcp...).
func ParseIPArg(v string) (*IPConfig, error) {
	switch v {
	case "", "off", "none", "on", "any", "dhcp", "bootp", "rarp", "both", "dhcp6":
		return nil, nil
	}
	parts := strings.Split(v, ":")
	if len(parts) > 10 {
		return nil, fmt.Errorf("ip=%q: too many fields (%d)", v, len(parts))
	}
	for len(parts) < 10 {
		parts = append(parts, "")
	}
	var c IPConfig
	var err error
	if c.ClientIP, err = parseIPv4("client-ip", parts[0], true); err != nil {
		return nil, fmt.Errorf("ip=%q: %w", v, err)
	}
	if c.ServerIP, err = parseIPv4("server-ip", parts[1], false); err != nil {
		return nil, fmt.Errorf("ip=%q: %w", v, err)
	}
	if c.Gateway, err = parseIPv4("gw-ip", parts[2], false); err != nil {
		return nil, fmt.Errorf("ip=%q: %w", v, err)
	}
	if parts[3] == "" {
		c.Netmask = c.ClientIP.DefaultMask()
	} else {
		m, err := parseIPv4("netmask", parts[3], true)
		if err != nil {
			return nil, fmt.Errorf("ip=%q: %w", v, err)
		}
		c.Netmask = net.IPMask(m.To4())
		if ones, bits := c.Netmask.Size(); ones == 0 && bits == 0 {
			return nil, fmt.Errorf("ip=%q: netmask %s is not contiguous", v, parts[3])
		}
	}
	if parts[4] != "" && !validHostname(parts[4]) {
		return nil, fmt.Errorf("ip=%q: invalid hostname %q", v, parts[4])
	}
	c.Hostname = parts[4]
	c.Device = parts[5]
	if c.Device == "" {
		c.Device = "eth0"
	}
	if strings.ContainsAny(c.Device, "/ \x00") || len(c.Device) > 15 {
		return nil, fmt.Errorf("ip=%q: invalid device %q", v, c.Device)
	}
	c.Autoconf = parts[6]
	for _, d := range parts[7:9] {
		if d == "" {
			continue
		}
		ip, err := parseIPv4("dns", d, true)
		if err != nil {
			return nil, fmt.Errorf("ip=%q: %w", v, err)
		}
		c.DNS = append(c.DNS, ip)
	}
	return &c, nil
}

func parseIPv4(field, s string, required bool) (net.IP, error) {
	if s == "" {
		if required {
			return nil, fmt.Errorf("%s is required", field)
		}
		return nil, nil
	}
	ip := net.ParseIP(s).To4()
	if ip == nil {
		return nil, fmt.Errorf("%s %q is not an IPv4 address", field, s)
	}
	return ip, nil
}

func validHostname(h string) bool {
	if h == "" || len(h) > 64 {
		return false
	}
	for _, r := range h {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '-', r == '.':
		default:
			return false
		}
	}
	return true
}
