package cli

import "testing"

func TestAgentFlagsOverrideEnvironment(t *testing.T) {
	env := map[string]string{"WRENN_CP_URL": "http://env:8000", "WRENN_AGENT_ADDRESS": "env:9090", "WRENN_DIR": "/d"}
	get := withFlags(func(k string) string { return env[k] }, map[string]string{
		"WRENN_CP_URL": "http://flag:8000", "WRENN_AGENT_ADDRESS": "", "WRENN_REGISTER_TOKEN": "tok"})
	cases := map[string]string{
		"WRENN_CP_URL":         "http://flag:8000", // flag wins
		"WRENN_AGENT_ADDRESS":  "env:9090",         // empty flag keeps the environment
		"WRENN_REGISTER_TOKEN": "tok",
		"WRENN_DIR":            "/d",
	}
	for k, want := range cases {
		if got := get(k); got != want {
			t.Errorf("%s = %q, want %q", k, got, want)
		}
	}
}
