// Package builds turns recipes into templates: the recipe parser, the
// archive checks for COPY, the build service behind /v1/admin/builds and
// the worker pool that runs builds from a Redis queue.
package builds

import (
	"encoding/json"
	"errors"
	"fmt"
	"path"
	"strings"
	"time"
	"unicode/utf8"
)

// Recipe limits. A step is one entry of recipe[] or one line of recipe_text.
const (
	MaxLineBytes = 4096
	MaxSteps     = 200

	DefaultStepTimeout = 10 * time.Minute
	MaxStepTimeout     = time.Hour
)

// Op is what a step does.
type Op string

const (
	OpRun     Op = "RUN"     // sh -c cmd, in the foreground
	OpEnv     Op = "ENV"     // Key=Value for later steps and the template
	OpWorkdir Op = "WORKDIR" // cwd for later steps and the template (created)
	OpUser    Op = "USER"    // user for later steps and the template
	OpCopy    Op = "COPY"    // Src (in the uploaded archive) to Dst
	OpStart   Op = "START"   // sh -c cmd in the background; keeps running in a snapshot
)

// Step is one parsed recipe entry. Line is 1-based.
type Step struct {
	Line    int      `json:"line"`
	Op      Op       `json:"op"`
	Cmd     string   `json:"cmd,omitempty"`
	Timeout Duration `json:"timeout,omitempty"` // RUN only
	Key     string   `json:"key,omitempty"`
	Value   string   `json:"value,omitempty"`
	Path    string   `json:"path,omitempty"` // WORKDIR, COPY destination
	Src     string   `json:"src,omitempty"`  // COPY source, relative to the archive root
	User    string   `json:"user,omitempty"`
}

// Text is the step as shown in build results.
func (s Step) Text() string {
	switch s.Op {
	case OpRun:
		if time.Duration(s.Timeout) != DefaultStepTimeout {
			return fmt.Sprintf("RUN --timeout=%s %s", time.Duration(s.Timeout), s.Cmd)
		}
		if first, _, _ := strings.Cut(s.Cmd, " "); isInstruction(first) {
			return "RUN " + s.Cmd
		}
		return s.Cmd
	case OpEnv:
		return "ENV " + s.Key + "=" + s.Value
	case OpWorkdir:
		return "WORKDIR " + s.Path
	case OpUser:
		return "USER " + s.User
	case OpCopy:
		return "COPY " + s.Src + " " + s.Path
	case OpStart:
		return "START " + s.Cmd
	}
	return string(s.Op)
}

// LineError is a recipe problem at one line.
type LineError struct {
	Line int
	Msg  string
}

func (e *LineError) Error() string { return fmt.Sprintf("line %d: %s", e.Line, e.Msg) }

func lineErr(line int, format string, args ...any) error {
	return &LineError{Line: line, Msg: fmt.Sprintf(format, args...)}
}

// ErrEmpty: the recipe has no step.
var ErrEmpty = errors.New("the recipe has no steps")

// ParseText parses recipe_text: one step per line; blank lines and lines
// starting with '#' are skipped but still counted for line numbers.
func ParseText(text string) ([]Step, error) {
	return parse(strings.Split(text, "\n"), true)
}

// ParseLines parses recipe[]: every entry is a step (an entry may be a
// multi-line script).
func ParseLines(lines []string) ([]Step, error) {
	return parse(lines, false)
}

func parse(lines []string, text bool) ([]Step, error) {
	var steps []Step
	for i, raw := range lines {
		n := i + 1
		if text {
			raw = strings.TrimSuffix(raw, "\r")
		}
		line := strings.TrimSpace(raw)
		if text && (line == "" || strings.HasPrefix(line, "#")) {
			continue
		}
		if len(steps) == MaxSteps {
			return nil, lineErr(n, "too many steps: at most %d", MaxSteps)
		}
		st, err := ParseStep(n, line)
		if err != nil {
			return nil, err
		}
		steps = append(steps, st)
	}
	if len(steps) == 0 {
		return nil, ErrEmpty
	}
	return steps, nil
}

// isInstruction: a first word of two or more capital letters names an
// instruction, so a misspelt one ("RNU") is refused rather than run.
func isInstruction(w string) bool {
	if len(w) < 2 {
		return false
	}
	for i := 0; i < len(w); i++ {
		if w[i] < 'A' || w[i] > 'Z' {
			return false
		}
	}
	return true
}

// ParseStep parses one step at line n.
func ParseStep(n int, line string) (Step, error) {
	if len(line) > MaxLineBytes {
		return Step{}, lineErr(n, "longer than %d bytes", MaxLineBytes)
	}
	if !utf8.ValidString(line) || strings.ContainsRune(line, 0) {
		return Step{}, lineErr(n, "must be UTF-8 text without NUL")
	}
	if line == "" {
		return Step{}, lineErr(n, "empty step")
	}
	word, rest, _ := strings.Cut(line, " ")
	rest = strings.TrimSpace(rest)
	if !isInstruction(word) {
		return Step{Line: n, Op: OpRun, Cmd: line, Timeout: Duration(DefaultStepTimeout)}, nil
	}
	st := Step{Line: n, Op: Op(word)}
	switch st.Op {
	case OpRun:
		st.Timeout = Duration(DefaultStepTimeout)
		if opt, after, ok := strings.Cut(rest, " "); strings.HasPrefix(rest, "--") {
			if !ok {
				after = ""
			}
			v, found := strings.CutPrefix(opt, "--timeout=")
			if !found {
				return Step{}, lineErr(n, "unknown RUN option %q (only --timeout=DURATION)", opt)
			}
			d, err := time.ParseDuration(v)
			if err != nil || d < time.Second || d > MaxStepTimeout {
				return Step{}, lineErr(n, "--timeout must be a duration between 1s and %s, like 90s or 5m", MaxStepTimeout)
			}
			st.Timeout, rest = Duration(d), strings.TrimSpace(after)
		}
		st.Cmd = rest
	case OpStart:
		st.Cmd = rest
	case OpEnv:
		k, v, ok := strings.Cut(rest, "=")
		if !ok || !validEnvKey(k) {
			return Step{}, lineErr(n, "ENV needs KEY=value with KEY of letters, digits and '_', not starting with a digit")
		}
		st.Key, st.Value = k, v
		return st, nil
	case OpWorkdir:
		if !strings.HasPrefix(rest, "/") || strings.ContainsAny(rest, " \t\r\n") {
			return Step{}, lineErr(n, "WORKDIR needs one absolute path")
		}
		st.Path = path.Clean(rest)
		return st, nil
	case OpUser:
		if !validUser(rest) {
			return Step{}, lineErr(n, "USER needs a user name (1-32 of a-z, 0-9, '_' or '-', starting with a letter or '_')")
		}
		st.User = rest
		return st, nil
	case OpCopy:
		f := strings.Fields(rest)
		if len(f) != 2 {
			return Step{}, lineErr(n, "COPY needs a source in the archive and a destination: COPY src dst")
		}
		src, ok := CleanArchivePath(f[0])
		if !ok {
			return Step{}, lineErr(n, "COPY source %q must be a relative path inside the archive", f[0])
		}
		if !strings.HasPrefix(f[1], "/") {
			return Step{}, lineErr(n, "COPY destination %q must be an absolute path", f[1])
		}
		st.Src, st.Path = src, path.Clean(f[1])
		return st, nil
	default:
		return Step{}, lineErr(n, "unknown instruction %s (use RUN, ENV, WORKDIR, USER, COPY or START; a plain line is a shell command)", word)
	}
	if st.Cmd == "" {
		return Step{}, lineErr(n, "%s needs a command", st.Op)
	}
	return st, nil
}

func validEnvKey(k string) bool {
	if k == "" || len(k) > 256 || k[0] >= '0' && k[0] <= '9' {
		return false
	}
	for i := 0; i < len(k); i++ {
		c := k[i]
		if !(c == '_' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9') {
			return false
		}
	}
	return true
}

func validUser(u string) bool {
	if u == "" || len(u) > 32 || u[0] == '-' || u[0] >= '0' && u[0] <= '9' {
		return false
	}
	for i := 0; i < len(u); i++ {
		c := u[i]
		if !(c == '_' || c == '-' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9') {
			return false
		}
	}
	return true
}

// CleanArchivePath cleans a path inside an archive; ok is false when it is
// absolute or leaves the archive's root.
func CleanArchivePath(p string) (string, bool) {
	if p == "" || strings.HasPrefix(p, "/") || strings.ContainsRune(p, 0) || strings.Contains(p, "\\") {
		return "", false
	}
	c := path.Clean(p)
	if c == ".." || strings.HasPrefix(c, "../") {
		return "", false
	}
	return c, true
}

// Duration is a time.Duration written as "5s" in JSON.
type Duration time.Duration

// MarshalJSON writes the duration as text.
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(time.Duration(d).String()) }

// UnmarshalJSON reads "5s" (or a number of seconds).
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		var secs float64
		if err := json.Unmarshal(b, &secs); err != nil {
			return errors.New("must be a duration like \"5s\" or a number of seconds")
		}
		*d = Duration(secs * float64(time.Second))
		return nil
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("must be a duration like \"5s\": %w", err)
	}
	*d = Duration(v)
	return nil
}

// Healthcheck decides when a snapshot template is ready: cmd is run every
// interval (after start_period) until it exits 0, at most retries times.
type Healthcheck struct {
	Cmd         string   `json:"cmd"`
	Interval    Duration `json:"interval"`
	Timeout     Duration `json:"timeout"`
	Retries     int      `json:"retries"`
	StartPeriod Duration `json:"start_period"`
}

// Healthcheck defaults and bounds.
const (
	defaultInterval = time.Second
	defaultHCTime   = 5 * time.Second
	defaultRetries  = 30
)

// Normalize fills defaults and checks bounds; the error names the field.
func (h *Healthcheck) Normalize() (field string, err error) {
	h.Cmd = strings.TrimSpace(h.Cmd)
	if h.Cmd == "" || len(h.Cmd) > MaxLineBytes || !utf8.ValidString(h.Cmd) || strings.ContainsRune(h.Cmd, 0) {
		return "healthcheck.cmd", fmt.Errorf("healthcheck.cmd must be a command of 1-%d bytes", MaxLineBytes)
	}
	if h.Interval == 0 {
		h.Interval = Duration(defaultInterval)
	}
	if h.Timeout == 0 {
		h.Timeout = Duration(defaultHCTime)
	}
	if h.Retries == 0 {
		h.Retries = defaultRetries
	}
	checks := []struct {
		field    string
		v        time.Duration
		min, max time.Duration
	}{
		{"healthcheck.interval", time.Duration(h.Interval), 100 * time.Millisecond, time.Minute},
		{"healthcheck.timeout", time.Duration(h.Timeout), time.Second, 5 * time.Minute},
		{"healthcheck.start_period", time.Duration(h.StartPeriod), 0, 10 * time.Minute},
	}
	for _, c := range checks {
		if c.v < c.min || c.v > c.max {
			return c.field, fmt.Errorf("%s must be between %s and %s", c.field, c.min, c.max)
		}
	}
	if h.Retries < 1 || h.Retries > 1000 {
		return "healthcheck.retries", errors.New("healthcheck.retries must be between 1 and 1000")
	}
	return "", nil
}
