package cleanup_test

import (
	"context"
	"errors"
	"slices"
	"sync"
	"testing"

	"github.com/wrenn-dev/wrenn/internal/agent/cleanup"
)

// recorder notes which steps ran, in order; fail makes the named steps fail.
type recorder struct {
	mu   sync.Mutex
	ran  []string
	fail map[string]error
}

func (r *recorder) step(name string) func(context.Context) error {
	return func(context.Context) error {
		r.mu.Lock()
		defer r.mu.Unlock()
		r.ran = append(r.ran, name)
		return r.fail[name]
	}
}

func (r *recorder) take() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := r.ran
	r.ran = nil
	return out
}

func TestRun(t *testing.T) {
	errStop := errors.New("vmm would not stop")
	errNet := errors.New("netns busy")
	tests := []struct {
		name     string
		push     []string
		fail     map[string]error
		wantRan  []string
		wantErrs []error
		wantLeft int
		// wantRetry is what a second Run runs once the failures are gone.
		wantRetry []string
	}{
		{name: "empty", wantRan: nil},
		{name: "reverse order", push: []string{"dir", "slot", "vmm", "client"}, wantRan: []string{"client", "vmm", "slot", "dir"}},
		{
			name: "a failure does not stop the rest and is kept",
			push: []string{"dir", "slot", "vmm", "client"}, fail: map[string]error{"vmm": errStop},
			wantRan: []string{"client", "vmm", "slot", "dir"}, wantErrs: []error{errStop}, wantLeft: 1,
			wantRetry: []string{"vmm"},
		},
		{
			name: "failures are joined and kept in order",
			push: []string{"dir", "slot", "vmm"}, fail: map[string]error{"vmm": errStop, "slot": errNet},
			wantRan: []string{"vmm", "slot", "dir"}, wantErrs: []error{errStop, errNet}, wantLeft: 2,
			wantRetry: []string{"vmm", "slot"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := &recorder{fail: tt.fail}
			var s cleanup.Stack
			for _, n := range tt.push {
				s.Push(n, r.step(n))
			}
			err := s.Run(t.Context())
			if got := r.take(); !slices.Equal(got, tt.wantRan) {
				t.Fatalf("ran %v, want %v", got, tt.wantRan)
			}
			for _, want := range tt.wantErrs {
				if !errors.Is(err, want) {
					t.Fatalf("err = %v, want it to hold %v", err, want)
				}
			}
			if len(tt.wantErrs) == 0 && err != nil {
				t.Fatalf("err = %v", err)
			}
			if s.Len() != tt.wantLeft {
				t.Fatalf("%d steps left, want %d", s.Len(), tt.wantLeft)
			}
			// Once the trouble is over, only the failed steps run again,
			// and after that nothing does.
			r.fail = nil
			if err := s.Run(t.Context()); err != nil {
				t.Fatalf("second run: %v", err)
			}
			if got := r.take(); !slices.Equal(got, tt.wantRetry) {
				t.Fatalf("second run ran %v, want %v", got, tt.wantRetry)
			}
			if err := s.Run(t.Context()); err != nil || len(r.take()) != 0 || s.Len() != 0 {
				t.Fatalf("third run: err %v, left %d", err, s.Len())
			}
		})
	}
}

func TestErrorNamesStep(t *testing.T) {
	var s cleanup.Stack
	s.Push("release network slot ns-3", func(context.Context) error { return errors.New("busy") })
	err := s.Run(t.Context())
	if err == nil || err.Error() != "release network slot ns-3: busy" {
		t.Fatalf("err = %v", err)
	}
}

// A step pushed after a failed one runs before the retry of the failed one.
func TestKeptBelowNewSteps(t *testing.T) {
	r := &recorder{fail: map[string]error{"old slot": errors.New("busy")}}
	var s cleanup.Stack
	s.Push("old slot", r.step("old slot"))
	s.Run(t.Context())
	r.take()
	r.fail = nil
	s.Push("new vmm", r.step("new vmm"))
	if err := s.Run(t.Context()); err != nil {
		t.Fatal(err)
	}
	if got, want := r.take(), []string{"new vmm", "old slot"}; !slices.Equal(got, want) {
		t.Fatalf("ran %v, want %v", got, want)
	}
}

// Concurrent Runs (a VMM death racing a destroy) run each step once.
func TestConcurrentRunsRunEachStepOnce(t *testing.T) {
	r := &recorder{}
	var s cleanup.Stack
	names := []string{"a", "b", "c", "d", "e", "f", "g", "h"}
	for _, n := range names {
		s.Push(n, r.step(n))
	}
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			if err := s.Run(t.Context()); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	got := r.take()
	slices.Sort(got)
	if !slices.Equal(got, names) {
		t.Fatalf("ran %v, want each of %v once", got, names)
	}
}

// The steps get the context Run was given.
func TestStepsGetContext(t *testing.T) {
	type key struct{}
	ctx := context.WithValue(t.Context(), key{}, "v")
	var s cleanup.Stack
	var got any
	s.Push("x", func(ctx context.Context) error { got = ctx.Value(key{}); return nil })
	if err := s.Run(ctx); err != nil || got != "v" {
		t.Fatalf("err %v, value %v", err, got)
	}
}
