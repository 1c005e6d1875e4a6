package pid1

import (
	"net"
	"testing"
)

func TestParseIPArg(t *testing.T) {
	tests := []struct {
		in      string
		want    *IPConfig
		wantErr bool
	}{
		{in: "off"},
		{in: "dhcp"},
		{in: ""},
		{in: "10.0.0.2::10.0.0.1:255.255.255.252::eth0:off", want: &IPConfig{ClientIP: net.IPv4(10, 0, 0, 2).To4(), Gateway: net.IPv4(10, 0, 0, 1).To4(), Netmask: net.CIDRMask(30, 32), Device: "eth0", Autoconf: "off"}},
		{in: "169.254.0.21:169.254.0.22:169.254.0.22:255.255.255.252:sbx:eth1:off:192.0.2.53", want: &IPConfig{ClientIP: net.IPv4(169, 254, 0, 21).To4(), ServerIP: net.IPv4(169, 254, 0, 22).To4(), Gateway: net.IPv4(169, 254, 0, 22).To4(), Netmask: net.CIDRMask(30, 32), Hostname: "sbx", Device: "eth1", Autoconf: "off", DNS: []net.IP{net.IPv4(192, 0, 2, 53).To4()}}},
		{in: "10.1.2.3", want: &IPConfig{ClientIP: net.IPv4(10, 1, 2, 3).To4(), Netmask: net.CIDRMask(8, 32), Device: "eth0"}},
		{in: "::10.0.0.1:255.255.255.0::eth0:off", wantErr: true},
		{in: "10.0.0.300::::", wantErr: true},
		{in: "10.0.0.2::10.0.0.1:255.0.255.0::eth0:off", wantErr: true},
		{in: "10.0.0.2::gw:255.255.255.0", wantErr: true},
		{in: "10.0.0.2::::bad host!", wantErr: true},
		{in: "10.0.0.2:::::eth/0", wantErr: true},
		{in: "10.0.0.2::::::::::extra", wantErr: true},
		{in: "fe80::1", wantErr: true},
	}
	for _, tc := range tests {
		got, err := ParseIPArg(tc.in)
		if (err != nil) != tc.wantErr {
			t.Errorf("ParseIPArg(%q) error = %v, want error %v", tc.in, err, tc.wantErr)
			continue
		}
		if tc.want == nil {
			if got != nil {
				t.Errorf("ParseIPArg(%q) = %+v, want nil", tc.in, got)
			}
			continue
		}
		if got == nil || !got.ClientIP.Equal(tc.want.ClientIP) || !got.ServerIP.Equal(tc.want.ServerIP) || !got.Gateway.Equal(tc.want.Gateway) ||
			got.Netmask.String() != tc.want.Netmask.String() || got.Hostname != tc.want.Hostname || got.Device != tc.want.Device ||
			got.Autoconf != tc.want.Autoconf || len(got.DNS) != len(tc.want.DNS) {
			t.Errorf("ParseIPArg(%q) = %+v, want %+v", tc.in, got, tc.want)
		}
	}
}

func TestParseCmdline(t *testing.T) {
	c, err := ParseCmdline("console=ttyS0 root=/dev/vda ip=10.0.0.2::10.0.0.1:255.255.255.252::eth0:off wrenn.hostname=box wrenn.dns=192.0.2.1,192.0.2.2 quiet\n")
	if err != nil {
		t.Fatal(err)
	}
	if c.IP == nil || c.IP.ClientIP.String() != "10.0.0.2" || c.Hostname != "box" || len(c.DNS) != 2 || c.DNS[1].String() != "192.0.2.2" {
		t.Fatalf("got %+v", c)
	}
	// No wrenn.dns: no resolver at all (never a default public one).
	c, err = ParseCmdline("ip=10.0.0.2::10.0.0.1:255.255.255.252:h:eth0:off:192.0.2.9")
	if err != nil || len(c.DNS) != 0 {
		t.Fatalf("DNS without wrenn.dns= : %+v %v", c, err)
	}
	for _, bad := range []string{"wrenn.dns=8.8.8.x", "wrenn.hostname=a_b", "ip=1.2.3"} {
		if _, err := ParseCmdline(bad); err == nil {
			t.Errorf("ParseCmdline(%q) accepted", bad)
		}
	}
}

func FuzzParseCmdline(f *testing.F) {
	for _, s := range []string{"ip=10.0.0.2::10.0.0.1:255.255.255.252::eth0:off", "ip=dhcp", "wrenn.dns=1.2.3.4,", "ip=:::::::::", "ip=1.2.3.4:1.2.3.5:1.2.3.6:255.255.255.0:h:e:off:1.1.1.1:2.2.2.2:3.3.3.3", "wrenn.hostname="} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		c, err := ParseCmdline(s)
		if err != nil {
			return
		}
		if c.IP != nil {
			if c.IP.ClientIP.To4() == nil || c.IP.Device == "" || len(c.IP.Netmask) != 4 {
				t.Fatalf("accepted incomplete config %+v from %q", c.IP, s)
			}
			if ones, _ := c.IP.Netmask.Size(); ones == 0 && c.IP.Netmask.String() != "00000000" {
				t.Fatalf("non-contiguous mask accepted from %q", s)
			}
		}
	})
}
