package main

import (
	"context"
	"net/http"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/wrenn-dev/wrenn/internal/envd/envdtest"
	"github.com/wrenn-dev/wrenn/internal/testenv"
	pb "github.com/wrenn-dev/wrenn/proto/envd/process"
	"github.com/wrenn-dev/wrenn/proto/envd/process/processconnect"
)

// inGroup lists the live processes of process group pgid.
func inGroup(pgid int) []int {
	ents, _ := os.ReadDir("/proc")
	var pids []int
	for _, d := range ents {
		b, err := os.ReadFile("/proc/" + d.Name() + "/stat")
		if err != nil {
			continue
		}
		s := string(b)
		i := strings.LastIndexByte(s, ')')
		f := strings.Fields(s[i+1:])
		// state ppid pgrp
		if len(f) > 2 && f[2] == strconv.Itoa(pgid) && f[0] != "Z" {
			pid, _ := strconv.Atoi(d.Name())
			pids = append(pids, pid)
		}
	}
	return pids
}

func TestForkBombIsContained(t *testing.T) {
	testenv.Require(t, os.Getuid() == 0, "needs root to run processes as another user")
	const limit = 64
	e := envdtest.Start(t, "127.0.0.1:0", "-max-user-procs", strconv.Itoa(limit))
	pc := processconnect.NewProcessClient(h2cClient(), e.URL)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	req := connect.NewRequest(&pb.StartRequest{
		Process: &pb.ProcessConfig{Cmd: "/bin/sh", Args: []string{"-c", "(while :; do sleep 10 & done) & exec sleep 30"}},
		Stdin:   new(false),
	})
	req.Header().Set("Authorization", "Basic bm9ib2R5Og==") // nobody
	st, err := pc.Start(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if !st.Receive() {
		t.Fatalf("no start event: %v", st.Err())
	}
	pid := int(st.Msg().GetEvent().GetStart().GetPid())
	t.Cleanup(func() {
		for range 100 {
			if len(inGroup(pid)) == 0 {
				return
			}
			syscall.Kill(-pid, syscall.SIGKILL)
			time.Sleep(50 * time.Millisecond)
		}
	})
	time.Sleep(time.Second)
	n := len(inGroup(pid))
	if n > limit+1 {
		t.Errorf("fork bomb reached %d processes, limit %d", n, limit)
	}
	if n < limit/2 {
		t.Errorf("fork bomb has only %d processes: it did not run", n)
	}
	t.Logf("fork bomb held at %d processes", n)
	// envd keeps answering, and starts other (root) work.
	res, err := http.Get(e.URL + "/health")
	if err != nil || res.StatusCode != http.StatusNoContent {
		t.Fatalf("health during the fork bomb: %v", err)
	}
	res.Body.Close()
	if _, err := pc.SendSignal(ctx, connect.NewRequest(&pb.SendSignalRequest{Process: &pb.ProcessSelector{Selector: &pb.ProcessSelector_Pid{Pid: uint32(pid)}}, Signal: pb.Signal_SIGNAL_SIGKILL})); err != nil {
		t.Fatalf("kill the bomb: %v", err)
	}
	for st.Receive() {
		if end := st.Msg().GetEvent().GetEnd(); end != nil {
			if end.Status != "signal: killed" {
				t.Errorf("bomb ended with %q", end.Status)
			}
			break
		}
	}
	// Orphans came back to envd (child subreaper) and were reaped there.
	for range 100 {
		if zombiesOf(t, e.Cmd.Process.Pid) == 0 && len(inGroup(pid)) == 0 {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Errorf("after the kill: %d processes in the group, %d zombies of envd", len(inGroup(pid)), zombiesOf(t, e.Cmd.Process.Pid))
}

func TestSIGTERMReachesChildren(t *testing.T) {
	e := envdtest.Start(t, "127.0.0.1:0")
	pc := processconnect.NewProcessClient(h2cClient(), e.URL)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	st, err := pc.Start(ctx, connect.NewRequest(&pb.StartRequest{Process: &pb.ProcessConfig{Cmd: "sleep", Args: []string{"60"}}}))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if !st.Receive() {
		t.Fatal(st.Err())
	}
	pid := int(st.Msg().GetEvent().GetStart().GetPid())
	e.Cmd.Process.Signal(os.Interrupt)
	done := make(chan struct{})
	go func() { e.Cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("envd did not stop")
	}
	for range 100 {
		if len(inGroup(pid)) == 0 {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("child %d still running after envd stopped", pid)
}
