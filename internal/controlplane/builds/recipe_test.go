package builds

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"
)

func TestParseStep(t *testing.T) {
	def := Duration(DefaultStepTimeout)
	cases := []struct {
		line    string
		want    Step
		wantErr string
	}{
		{line: "mkdir -p /opt/app", want: Step{Op: OpRun, Cmd: "mkdir -p /opt/app", Timeout: def}},
		{line: "FOO=bar env", want: Step{Op: OpRun, Cmd: "FOO=bar env", Timeout: def}},
		{line: "RUN echo hi", want: Step{Op: OpRun, Cmd: "echo hi", Timeout: def}},
		{line: "RUN --timeout=5m make", want: Step{Op: OpRun, Cmd: "make", Timeout: Duration(5 * time.Minute)}},
		{line: "RUN --timeout=0s make", wantErr: "--timeout must be"},
		{line: "RUN --timeout=2h make", wantErr: "--timeout must be"},
		{line: "RUN --timeout=5m", wantErr: "RUN needs a command"},
		{line: "RUN --retries=3 x", wantErr: "unknown RUN option"},
		{line: "RUN", wantErr: "RUN needs a command"},
		{line: "ENV PATH=/opt/bin:/usr/bin", want: Step{Op: OpEnv, Key: "PATH", Value: "/opt/bin:/usr/bin"}},
		{line: "ENV EMPTY=", want: Step{Op: OpEnv, Key: "EMPTY"}},
		{line: "ENV A=b=c", want: Step{Op: OpEnv, Key: "A", Value: "b=c"}},
		{line: "ENV 1X=y", wantErr: "ENV needs KEY=value"},
		{line: "ENV novalue", wantErr: "ENV needs KEY=value"},
		{line: "WORKDIR /srv/app/", want: Step{Op: OpWorkdir, Path: "/srv/app"}},
		{line: "WORKDIR srv", wantErr: "absolute path"},
		{line: "WORKDIR /a b", wantErr: "absolute path"},
		{line: "USER app", want: Step{Op: OpUser, User: "app"}},
		{line: "USER Root", wantErr: "USER needs a user name"},
		{line: "USER", wantErr: "USER needs a user name"},
		{line: "COPY site /srv", want: Step{Op: OpCopy, Src: "site", Path: "/srv"}},
		{line: "COPY ./a/../b /x/", want: Step{Op: OpCopy, Src: "b", Path: "/x"}},
		{line: "COPY ../etc /x", wantErr: "inside the archive"},
		{line: "COPY /etc /x", wantErr: "inside the archive"},
		{line: "COPY a x", wantErr: "absolute path"},
		{line: "COPY a", wantErr: "COPY needs"},
		{line: "START busybox httpd -p 8080 -h /srv", want: Step{Op: OpStart, Cmd: "busybox httpd -p 8080 -h /srv"}},
		{line: "START", wantErr: "START needs a command"},
		{line: "ADD x /y", wantErr: "unknown instruction ADD"},
		{line: "RNU ls", wantErr: "unknown instruction RNU"},
		{line: "A=1 ls", want: Step{Op: OpRun, Cmd: "A=1 ls", Timeout: def}},
		{line: "echo \x00", wantErr: "without NUL"},
		{line: "echo \xff", wantErr: "UTF-8"},
		{line: strings.Repeat("x", MaxLineBytes+1), wantErr: "longer than"},
	}
	for _, c := range cases {
		t.Run(c.line[:min(len(c.line), 40)], func(t *testing.T) {
			got, err := ParseStep(7, c.line)
			if c.wantErr != "" {
				var le *LineError
				if err == nil || !strings.Contains(err.Error(), c.wantErr) || !errors.As(err, &le) || le.Line != 7 || !strings.HasPrefix(err.Error(), "line 7: ") {
					t.Fatalf("ParseStep(%q) = %+v, %v; want a line-7 error with %q", c.line, got, err, c.wantErr)
				}
				return
			}
			c.want.Line = 7
			if err != nil || got != c.want {
				t.Fatalf("ParseStep(%q) = %+v, %v; want %+v", c.line, got, err, c.want)
			}
		})
	}
}

func TestParseTextAndLines(t *testing.T) {
	cases := []struct {
		name     string
		text     *string
		lines    []string
		wantOps  []Op
		wantLine []int
		wantErr  string
	}{
		{name: "text skips blanks and comments", text: new("# a web app\n\nmkdir -p /srv\r\nSTART httpd\n"), wantOps: []Op{OpRun, OpStart}, wantLine: []int{3, 4}},
		{name: "empty text", text: new("\n# only a comment\n"), wantErr: ErrEmpty.Error()},
		{name: "error names its line", text: new("ls\n\nBOGUS x\n"), wantErr: "line 3: unknown instruction BOGUS"},
		{name: "lines keep multi-line scripts", lines: []string{"ENV A=1", "if true; then\n  echo ok\nfi"}, wantOps: []Op{OpEnv, OpRun}, wantLine: []int{1, 2}},
		{name: "empty entry", lines: []string{"ls", "  "}, wantErr: "line 2: empty step"},
		{name: "no entries", lines: []string{}, wantErr: ErrEmpty.Error()},
		{name: "too many", lines: make([]string, MaxSteps+1), wantErr: "too many steps"},
		{name: "at the step limit", text: new(strings.Repeat("true\n", MaxSteps)), wantOps: nil, wantLine: nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if c.name == "too many" {
				for i := range c.lines {
					c.lines[i] = "true"
				}
			}
			var (
				steps []Step
				err   error
			)
			if c.text != nil {
				steps, err = ParseText(*c.text)
			} else {
				steps, err = ParseLines(c.lines)
			}
			if c.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), c.wantErr) {
					t.Fatalf("err = %v, want %q", err, c.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if c.wantOps == nil {
				if len(steps) != MaxSteps {
					t.Fatalf("%d steps, want %d", len(steps), MaxSteps)
				}
				return
			}
			if len(steps) != len(c.wantOps) {
				t.Fatalf("steps = %+v", steps)
			}
			for i, st := range steps {
				if st.Op != c.wantOps[i] || st.Line != c.wantLine[i] {
					t.Fatalf("step %d = %+v, want %s at line %d", i, st, c.wantOps[i], c.wantLine[i])
				}
			}
		})
	}
}

func TestStepTextRoundTrips(t *testing.T) {
	for _, line := range []string{"ls -l", "RUN FOO bar", "RUN --timeout=1m --x", "RUN --timeout=1m30s make", "ENV A=b c", "WORKDIR /srv", "USER app", "COPY site /srv", "START httpd -f"} {
		st, err := ParseStep(1, line)
		if err != nil {
			t.Fatal(err)
		}
		again, err := ParseStep(1, st.Text())
		if err != nil || again != st {
			t.Fatalf("%q -> %q -> %+v, %v", line, st.Text(), again, err)
		}
	}
}

func TestHealthcheckNormalize(t *testing.T) {
	cases := []struct {
		json      string
		wantField string
		want      Healthcheck
	}{
		{json: `{"cmd":"wget -qO- 127.0.0.1:8080"}`, want: Healthcheck{Cmd: "wget -qO- 127.0.0.1:8080", Interval: Duration(time.Second), Timeout: Duration(5 * time.Second), Retries: 30}},
		{json: `{"cmd":"true","interval":"250ms","timeout":2,"retries":3,"start_period":"1s"}`, want: Healthcheck{Cmd: "true", Interval: Duration(250 * time.Millisecond), Timeout: Duration(2 * time.Second), Retries: 3, StartPeriod: Duration(time.Second)}},
		{json: `{"cmd":" "}`, wantField: "healthcheck.cmd"},
		{json: `{"cmd":"true","interval":"1ms"}`, wantField: "healthcheck.interval"},
		{json: `{"cmd":"true","timeout":"1h"}`, wantField: "healthcheck.timeout"},
		{json: `{"cmd":"true","retries":-1}`, wantField: "healthcheck.retries"},
		{json: `{"cmd":"true","retries":5000}`, wantField: "healthcheck.retries"},
		{json: `{"cmd":"true","start_period":"-1s"}`, wantField: "healthcheck.start_period"},
	}
	for _, c := range cases {
		t.Run(c.json, func(t *testing.T) {
			var h Healthcheck
			if err := json.Unmarshal([]byte(c.json), &h); err != nil {
				t.Fatal(err)
			}
			field, err := h.Normalize()
			if field != c.wantField || (err != nil) != (c.wantField != "") {
				t.Fatalf("Normalize = %q, %v; want field %q", field, err, c.wantField)
			}
			if c.wantField == "" && h != c.want {
				t.Fatalf("got %+v, want %+v", h, c.want)
			}
		})
	}
	var d Duration
	if err := json.Unmarshal([]byte(`"soon"`), &d); err == nil {
		t.Fatal("a bad duration was accepted")
	}
}

func TestCleanArchivePath(t *testing.T) {
	cases := map[string]bool{"a": true, "a/b/": true, "./a": true, ".": true, "a/../b": true,
		"": false, "/a": false, "..": false, "../a": false, "a/../../b": false, "a\\b": false, "a\x00": false}
	for p, ok := range cases {
		if _, got := CleanArchivePath(p); got != ok {
			t.Errorf("CleanArchivePath(%q) ok = %v, want %v", p, got, ok)
		}
	}
}

// FuzzParseText: the parser never panics, and every step it accepts is
// within the limits and parses again to itself from its Text.
func FuzzParseText(f *testing.F) {
	for _, s := range []string{"mkdir -p /opt/app\necho built > /opt/app/marker", "RUN --timeout=5m make\nENV A=1\nWORKDIR /srv\nUSER app\nCOPY a /b\nSTART httpd",
		"# c\n\nBAD x", "RUN --timeout=", "ENV =", "COPY ../x /y", strings.Repeat("x", MaxLineBytes+1)} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, text string) {
		steps, err := ParseText(text)
		if err != nil {
			var le *LineError
			if !errors.Is(err, ErrEmpty) && !errors.As(err, &le) {
				t.Fatalf("error without a line: %v", err)
			}
			return
		}
		if len(steps) == 0 || len(steps) > MaxSteps {
			t.Fatalf("%d steps", len(steps))
		}
		for _, st := range steps {
			if st.Op == OpRun && (time.Duration(st.Timeout) < time.Second || time.Duration(st.Timeout) > MaxStepTimeout) {
				t.Fatalf("timeout out of bounds: %+v", st)
			}
			if st.Op == OpCopy {
				if _, ok := CleanArchivePath(st.Src); !ok {
					t.Fatalf("escaping COPY source accepted: %+v", st)
				}
			}
			again, err := ParseStep(st.Line, st.Text())
			if err != nil || again != st {
				t.Fatalf("%+v -> %q -> %+v, %v", st, st.Text(), again, err)
			}
		}
	})
}
