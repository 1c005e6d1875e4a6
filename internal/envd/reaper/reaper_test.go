package reaper

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// The Subreaper reaps every child of its process, so it runs in a child
// test process of its own (it would steal the go test binary's children).
const helperEnv = "WRENN_REAPER_HELPER"

func TestSubreaperDeliversEveryStatus(t *testing.T) {
	if os.Getenv(helperEnv) == "1" {
		if err := subreaperHelper(); err != nil {
			fmt.Fprintln(os.Stderr, "HELPER FAILURE:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestSubreaperDeliversEveryStatus$", "-test.count=1")
	cmd.Env = append(os.Environ(), helperEnv+"=1")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("helper: %v\n%s", err, out)
	}
}

func subreaperHelper() error {
	// Like PID 1: orphaned grandchildren are reparented to us.
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		return fmt.Errorf("set child subreaper: %w", err)
	}
	s := NewSubreaper()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go s.Run(ctx)

	const n = 600
	var wg sync.WaitGroup
	errc := make(chan error, n)
	sem := make(chan struct{}, 50)
	for i := range n {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			want := i % 200
			script := "exit " + strconv.Itoa(want)
			if i%3 == 0 {
				// Leaves an orphan that exits later, with another status.
				script = "(sleep 0.05; exit 77) & exit " + strconv.Itoa(want)
			}
			cmd := exec.Command("/bin/sh", "-c", script)
			ch, err := s.Start(cmd)
			if err != nil {
				errc <- err
				return
			}
			select {
			case ex := <-ch:
				cmd.Process.Release()
				if ex.Err != nil || !ex.Status.Exited() || ex.Status.ExitStatus() != want {
					errc <- fmt.Errorf("process %d: status %v (%v), want exit %d", i, ex.Status, ex.Err, want)
				}
			case <-time.After(30 * time.Second):
				errc <- fmt.Errorf("process %d: no exit status", i)
			}
		}()
	}
	wg.Wait()
	close(errc)
	for err := range errc {
		return err
	}
	// Orphans exit ~50 ms later and must be reaped too.
	deadline := time.Now().Add(10 * time.Second)
	for {
		all, zombies, err := children()
		if err != nil {
			return err
		}
		if all == 0 {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%d children (%d zombies) left", all, zombies)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if got := s.Orphans(); got < n/3 {
		return fmt.Errorf("reaped %d orphans, want at least %d", got, n/3)
	}
	return nil
}

func children() (all, zombies int, err error) {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return 0, 0, err
	}
	me := strconv.Itoa(os.Getpid())
	for _, d := range ents {
		b, err := os.ReadFile("/proc/" + d.Name() + "/stat")
		if err != nil {
			continue
		}
		s := string(b)
		i := strings.LastIndexByte(s, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(s[i+1:])
		if len(f) > 1 && f[1] == me {
			all++
			if f[0] == "Z" {
				zombies++
			}
		}
	}
	return all, zombies, nil
}

func TestDirect(t *testing.T) {
	tests := []struct {
		script string
		exit   int
		signal bool
	}{
		{"exit 0", 0, false},
		{"exit 42", 42, false},
		{"kill -TERM $$", 0, true},
	}
	for _, tc := range tests {
		ch, err := NewDirect().Start(exec.Command("/bin/sh", "-c", tc.script))
		if err != nil {
			t.Fatal(err)
		}
		ex := <-ch
		if ex.Err != nil || ex.Status.Signaled() != tc.signal || (!tc.signal && ex.Status.ExitStatus() != tc.exit) {
			t.Errorf("%q: %v %v", tc.script, ex.Status, ex.Err)
		}
	}
	if _, err := NewDirect().Start(exec.Command("/no/such/binary")); err == nil {
		t.Error("start of a missing binary succeeded")
	}
}
