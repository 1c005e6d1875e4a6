package config

import (
	"errors"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestHostsConfig(t *testing.T) {
	c, err := LoadControlPlane(envOf(validCP()))
	if err != nil {
		t.Fatal(err)
	}
	if c.Hosts.JWTSecret != "" || c.ReconcileInterval != 5*time.Second || c.Hosts.UnreachableAfter != 90*time.Second || c.Hosts.Scheduler != "round-robin" ||
		c.Hosts.MemoryOvercommit != 1.0 || c.Hosts.VCPUOvercommit != 4.0 {
		t.Fatalf("host defaults = %+v", c.Hosts)
	}
	env := validCP()
	env["WRENN_HOST_JWT_SECRET"] = strings.Repeat("h", 40)
	env["WRENN_RECONCILE_INTERVAL"] = "500ms"
	env["WRENN_HOST_UNREACHABLE_AFTER"] = "3s"
	env["WRENN_SCHEDULER"] = "least-loaded"
	env["WRENN_MEMORY_OVERCOMMIT"] = "1.25"
	env["WRENN_VCPU_OVERCOMMIT"] = "8"
	c, err = LoadControlPlane(envOf(env))
	if err != nil {
		t.Fatal(err)
	}
	if c.ReconcileInterval != 500*time.Millisecond || c.Hosts.UnreachableAfter != 3*time.Second || c.Hosts.Scheduler != "least-loaded" ||
		c.Hosts.MemoryOvercommit != 1.25 || c.Hosts.VCPUOvercommit != 8 {
		t.Fatalf("hosts = %+v", c.Hosts)
	}
	bad := []struct {
		name, key, value, wantVar string
	}{
		{"short host secret", "WRENN_HOST_JWT_SECRET", "short", "WRENN_HOST_JWT_SECRET"},
		{"host secret equals user secret", "WRENN_HOST_JWT_SECRET", strings.Repeat("s", 32), "WRENN_HOST_JWT_SECRET"},
		{"interval too small", "WRENN_RECONCILE_INTERVAL", "1ms", "WRENN_RECONCILE_INTERVAL"},
		{"retired monitor interval", "WRENN_HOST_MONITOR_INTERVAL", "10s", "WRENN_HOST_MONITOR_INTERVAL"},
		{"threshold garbage", "WRENN_HOST_UNREACHABLE_AFTER", "soon", "WRENN_HOST_UNREACHABLE_AFTER"},
		{"unknown scheduler", "WRENN_SCHEDULER", "random", "WRENN_SCHEDULER"},
		{"overcommit not a number", "WRENN_MEMORY_OVERCOMMIT", "lots", "WRENN_MEMORY_OVERCOMMIT"},
		{"overcommit NaN", "WRENN_MEMORY_OVERCOMMIT", "NaN", "WRENN_MEMORY_OVERCOMMIT"},
		{"overcommit zero", "WRENN_VCPU_OVERCOMMIT", "0", "WRENN_VCPU_OVERCOMMIT"},
		{"overcommit huge", "WRENN_VCPU_OVERCOMMIT", "1e9", "WRENN_VCPU_OVERCOMMIT"},
	}
	for _, b := range bad {
		t.Run(b.name, func(t *testing.T) {
			env := validCP()
			env[b.key] = b.value
			_, err := LoadControlPlane(envOf(env))
			var errs Errors
			if !errors.As(err, &errs) || len(errs) != 1 || errs[0].Var != b.wantVar {
				t.Fatalf("err = %v, want one problem with %s", err, b.wantVar)
			}
		})
	}
}

func TestAgentRegistrationConfig(t *testing.T) {
	a, err := LoadAgent(envOf(nil))
	if err != nil {
		t.Fatal(err)
	}
	r := a.Registration
	if len(r.CPURLs) != 0 || r.Token != "" || r.HeartbeatInterval != 30*time.Second || r.PauseAfter != 5*time.Minute {
		t.Fatalf("defaults = %+v", r)
	}
	ok := map[string]string{"WRENN_CP_URL": "http://127.0.0.1:8000", "WRENN_REGISTER_TOKEN": "wrnhr_x",
		"WRENN_AGENT_ADDRESS": "10.0.0.5:9090", "WRENN_HEARTBEAT_INTERVAL": "1s", "WRENN_CP_UNREACHABLE_PAUSE_AFTER": "10s"}
	a, err = LoadAgent(envOf(ok))
	if err != nil {
		t.Fatal(err)
	}
	if a.Registration.Address != "10.0.0.5:9090" || a.Registration.HeartbeatInterval != time.Second || a.Registration.PauseAfter != 10*time.Second ||
		!slices.Equal(a.Registration.CPURLs, []string{"http://127.0.0.1:8000"}) {
		t.Fatalf("registration = %+v", a.Registration)
	}
	// Several control planes: comma-separated, blanks dropped, order kept.
	for _, v := range []string{"http://cp-a:8000,https://cp-b:8000", " http://cp-a:8000 , https://cp-b:8000 ,"} {
		a, err = LoadAgent(envOf(map[string]string{"WRENN_CP_URL": v}))
		if err != nil {
			t.Fatal(err)
		}
		if want := []string{"http://cp-a:8000", "https://cp-b:8000"}; !slices.Equal(a.Registration.CPURLs, want) {
			t.Fatalf("WRENN_CP_URL=%q: %v, want %v", v, a.Registration.CPURLs, want)
		}
	}
	bad := []struct {
		name    string
		env     map[string]string
		wantVar string
	}{
		{"token without url", map[string]string{"WRENN_REGISTER_TOKEN": "x", "WRENN_AGENT_ADDRESS": "a:1"}, "WRENN_REGISTER_TOKEN"},
		{"token without address", map[string]string{"WRENN_REGISTER_TOKEN": "x", "WRENN_CP_URL": "http://a"}, "WRENN_REGISTER_TOKEN"},
		{"url not http", map[string]string{"WRENN_CP_URL": "ftp://a"}, "WRENN_CP_URL"},
		{"second url not http", map[string]string{"WRENN_CP_URL": "http://a,ftp://b"}, "WRENN_CP_URL"},
		{"address without port", map[string]string{"WRENN_AGENT_ADDRESS": "10.0.0.5"}, "WRENN_AGENT_ADDRESS"},
		{"address port zero", map[string]string{"WRENN_AGENT_ADDRESS": "10.0.0.5:0"}, "WRENN_AGENT_ADDRESS"},
		{"address without host", map[string]string{"WRENN_AGENT_ADDRESS": ":9090"}, "WRENN_AGENT_ADDRESS"},
		{"interval garbage", map[string]string{"WRENN_HEARTBEAT_INTERVAL": "often"}, "WRENN_HEARTBEAT_INTERVAL"},
	}
	for _, b := range bad {
		t.Run(b.name, func(t *testing.T) {
			_, err := LoadAgent(envOf(b.env))
			var errs Errors
			if !errors.As(err, &errs) || len(errs) != 1 || errs[0].Var != b.wantVar {
				t.Fatalf("err = %v, want one problem with %s", err, b.wantVar)
			}
		})
	}
}
