package httpapi

import (
	"strings"
	"testing"
)

func TestParseInit(t *testing.T) {
	tests := []struct {
		body    string
		wantErr bool
	}{
		{"", false},
		{"{}", false},
		{`{"envVars":{"A":"1"},"accessToken":"t","timestamp":"2026-01-01T00:00:00Z","defaultUser":"root","defaultWorkdir":"/home"}`, false},
		{`{"hyperloopIP":"x","volumeMounts":[]}`, false}, // E2B fields envd ignores
		{`{"envVars":{"":"1"}}`, true},
		{`{"envVars":{"A=B":"1"}}`, true},
		{`{"envVars":{"A":"x\u0000"}}`, true},
		{`{"defaultWorkdir":"home"}`, true},
		{`{"timestamp":"soon"}`, true},
		{`[1]`, true},
		{`{"accessToken":5}`, true},
	}
	for _, tc := range tests {
		_, err := ParseInit(strings.NewReader(tc.body))
		if (err != nil) != tc.wantErr {
			t.Errorf("ParseInit(%s) = %v, want error %v", tc.body, err, tc.wantErr)
		}
	}
}

func FuzzParseInit(f *testing.F) {
	for _, s := range []string{`{}`, `{"envVars":{"A":"1"}}`, `{"accessToken":"x","timestamp":"2026-01-01T00:00:00Z"}`, `{"defaultWorkdir":"/"}`} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, body string) {
		req, err := ParseInit(strings.NewReader(body))
		if err != nil {
			return
		}
		for k := range req.EnvVars {
			if k == "" || strings.ContainsAny(k, "=\x00") {
				t.Fatalf("accepted env name %q", k)
			}
		}
		if req.DefaultWorkdir != "" && req.DefaultWorkdir[0] != '/' {
			t.Fatalf("accepted relative workdir %q", req.DefaultWorkdir)
		}
	})
}
