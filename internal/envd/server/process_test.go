package server

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/wrenn-dev/wrenn/internal/envdwire"
	pb "github.com/wrenn-dev/wrenn/proto/envd/process"
)

func TestStart(t *testing.T) {
	e := newEnv(t, Config{})
	dir := t.TempDir()
	cwd := dir
	tests := []struct {
		name       string
		req        *pb.StartRequest
		hdr        map[string]string
		wantCode   connect.Code // of the Start call; 0 = success
		wantOut    string
		wantErr    string
		wantExit   int32
		wantStatus string
	}{
		{name: "stdout", req: sh("echo hello"), wantOut: "hello\n", wantStatus: "exit status 0"},
		{name: "stderr", req: sh("echo oops >&2"), wantErr: "oops\n", wantStatus: "exit status 0"},
		{name: "exit code", req: sh("exit 3"), wantExit: 3, wantStatus: "exit status 3"},
		{name: "killed by signal", req: sh("kill -9 $$"), wantExit: -1, wantStatus: "signal: killed"},
		{name: "args", req: &pb.StartRequest{Process: &pb.ProcessConfig{Cmd: "echo", Args: []string{"a b", "c"}}}, wantOut: "a b c\n", wantStatus: "exit status 0"},
		{name: "env", req: &pb.StartRequest{Process: &pb.ProcessConfig{Cmd: "/bin/sh", Args: []string{"-c", "echo $FOO"}, Envs: map[string]string{"FOO": "bar"}}}, wantOut: "bar\n", wantStatus: "exit status 0"},
		{name: "cwd", req: &pb.StartRequest{Process: &pb.ProcessConfig{Cmd: "pwd", Cwd: &cwd}}, wantOut: dir + "\n", wantStatus: "exit status 0"},
		{name: "user by basic auth", req: sh("id -u"), hdr: map[string]string{"Authorization": "Basic bm9ib2R5Og=="}, wantOut: "65534\n", wantStatus: "exit status 0"},
		{name: "stdin off reads EOF", req: &pb.StartRequest{Process: &pb.ProcessConfig{Cmd: "cat"}, Stdin: new(false)}, wantStatus: "exit status 0"},
		{name: "big output", req: sh("head -c 3000000 /dev/zero | tr '\\0' x"), wantOut: strings.Repeat("x", 3000000), wantStatus: "exit status 0"},
		{name: "unknown command", req: &pb.StartRequest{Process: &pb.ProcessConfig{Cmd: "/no/such/cmd"}}, wantCode: connect.CodeInvalidArgument},
		{name: "empty command", req: &pb.StartRequest{Process: &pb.ProcessConfig{}}, wantCode: connect.CodeInvalidArgument},
		{name: "missing cwd", req: &pb.StartRequest{Process: &pb.ProcessConfig{Cmd: "true", Cwd: new("/no/such/dir")}}, wantCode: connect.CodeInvalidArgument},
		{name: "cwd is a file", req: &pb.StartRequest{Process: &pb.ProcessConfig{Cmd: "true", Cwd: new("/etc/passwd")}}, wantCode: connect.CodeInvalidArgument},
		{name: "unknown user", req: sh("true"), hdr: map[string]string{"Authorization": "Basic bm9zdWNodXNlcjo="}, wantCode: connect.CodeInvalidArgument},
		{name: "bad auth header", req: sh("true"), hdr: map[string]string{"Authorization": "Basic !!!"}, wantCode: connect.CodeInvalidArgument},
		{name: "zero pty size", req: &pb.StartRequest{Process: &pb.ProcessConfig{Cmd: "true"}, Pty: &pb.PTY{Size: &pb.PTY_Size{}}}, wantCode: connect.CodeInvalidArgument},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if tc.hdr["Authorization"] == "Basic bm9ib2R5Og==" {
				requireRoot(t)
			}
			res, err := e.run(ctxT(t, 30*time.Second), tc.req, tc.hdr)
			if tc.wantCode != 0 {
				if codeOf(err) != tc.wantCode {
					t.Fatalf("got error %v, want code %v", err, tc.wantCode)
				}
				return
			}
			if err != nil {
				t.Fatalf("start: %v", err)
			}
			if res.pid == 0 {
				t.Error("no start event with a pid")
			}
			if res.end == nil {
				t.Fatal("no end event")
			}
			if got := res.stdout.String(); got != tc.wantOut {
				t.Errorf("stdout = %.80q (len %d), want %.80q (len %d)", got, len(got), tc.wantOut, len(tc.wantOut))
			}
			if got := res.stderr.String(); got != tc.wantErr {
				t.Errorf("stderr = %q, want %q", got, tc.wantErr)
			}
			if res.end.ExitCode != tc.wantExit || res.end.Status != tc.wantStatus {
				t.Errorf("end = %d %q, want %d %q", res.end.ExitCode, res.end.Status, tc.wantExit, tc.wantStatus)
			}
			if res.end.Exited != (tc.wantExit >= 0) {
				t.Errorf("exited = %v", res.end.Exited)
			}
		})
	}
}

func TestOwnProcessGroup(t *testing.T) {
	e := newEnv(t, Config{})
	res, err := e.run(ctxT(t, 10*time.Second), sh("ps -o pgid= -p $$; echo $$"), nil)
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(res.stdout.String())
	if len(f) != 2 || f[0] != f[1] {
		t.Fatalf("pgid/pid = %q, want the process to lead its own group", res.stdout.String())
	}
}

// startBG starts a process and returns its pid and the open stream.
func (e *env) startBG(t *testing.T, ctx context.Context, req *pb.StartRequest) (uint32, *connect.ServerStreamForClient[pb.StartResponse]) {
	t.Helper()
	st, err := e.proc.Start(ctx, connect.NewRequest(req))
	if err != nil {
		t.Fatalf("start: %v", err)
	}
	if !st.Receive() {
		t.Fatalf("no start event: %v", st.Err())
	}
	pid := st.Msg().GetEvent().GetStart().GetPid()
	if pid == 0 {
		t.Fatalf("first event is not start: %v", st.Msg())
	}
	return pid, st
}

func drain(st interface {
	Receive() bool
	Err() error
}, msg func() *pb.ProcessEvent) (*result, error) {
	res := &result{}
	for st.Receive() {
		collect(res, msg())
		if res.end != nil {
			break
		}
	}
	return res, st.Err()
}

func TestStdinSendAndClose(t *testing.T) {
	e := newEnv(t, Config{})
	ctx := ctxT(t, 20*time.Second)
	pid, st := e.startBG(t, ctx, &pb.StartRequest{Process: &pb.ProcessConfig{Cmd: "cat"}})
	sel := &pb.ProcessSelector{Selector: &pb.ProcessSelector_Pid{Pid: pid}}
	for _, s := range []string{"one\n", "two\n"} {
		if _, err := e.proc.SendInput(ctx, connect.NewRequest(&pb.SendInputRequest{Process: sel, Input: &pb.ProcessInput{Input: &pb.ProcessInput_Stdin{Stdin: []byte(s)}}})); err != nil {
			t.Fatalf("send input: %v", err)
		}
	}
	// StreamInput (client streaming, needs h2 for full duplex).
	cs := e.proc.StreamInput(ctx)
	cs.Send(&pb.StreamInputRequest{Event: &pb.StreamInputRequest_Start{Start: &pb.StreamInputRequest_StartEvent{Process: sel}}})
	cs.Send(&pb.StreamInputRequest{Event: &pb.StreamInputRequest_Data{Data: &pb.StreamInputRequest_DataEvent{Input: &pb.ProcessInput{Input: &pb.ProcessInput_Stdin{Stdin: []byte("three\n")}}}}})
	cs.Send(&pb.StreamInputRequest{Event: &pb.StreamInputRequest_Keepalive{Keepalive: &pb.StreamInputRequest_KeepAlive{}}})
	if _, err := cs.CloseAndReceive(); err != nil {
		t.Fatalf("stream input: %v", err)
	}
	if _, err := e.proc.CloseStdin(ctx, connect.NewRequest(&pb.CloseStdinRequest{Process: sel})); err != nil {
		t.Fatalf("close stdin: %v", err)
	}
	res, err := drain(st, func() *pb.ProcessEvent { return st.Msg().GetEvent() })
	if err != nil {
		t.Fatal(err)
	}
	if got := res.stdout.String(); got != "one\ntwo\nthree\n" {
		t.Errorf("stdout = %q", got)
	}
	if res.end == nil || res.end.ExitCode != 0 {
		t.Errorf("end = %v", res.end)
	}
	// The process is gone: every selector-based call is NotFound now.
	if _, err := e.proc.SendInput(ctx, connect.NewRequest(&pb.SendInputRequest{Process: sel, Input: &pb.ProcessInput{Input: &pb.ProcessInput_Stdin{Stdin: []byte("x")}}})); codeOf(err) != connect.CodeNotFound {
		t.Errorf("input after end: %v, want NotFound", err)
	}
}

func TestSelectorAndSignalErrors(t *testing.T) {
	e := newEnv(t, Config{})
	ctx := ctxT(t, 20*time.Second)
	pid, st := e.startBG(t, ctx, &pb.StartRequest{Process: &pb.ProcessConfig{Cmd: "sleep", Args: []string{"30"}}, Tag: new("sleeper"), Stdin: new(false)})
	pidSel := &pb.ProcessSelector{Selector: &pb.ProcessSelector_Pid{Pid: pid}}
	tests := []struct {
		name string
		call func() error
		want connect.Code
	}{
		{"no selector", func() error {
			_, err := e.proc.SendSignal(ctx, connect.NewRequest(&pb.SendSignalRequest{Signal: pb.Signal_SIGNAL_SIGTERM}))
			return err
		}, connect.CodeInvalidArgument},
		{"unknown pid", func() error {
			_, err := e.proc.SendSignal(ctx, connect.NewRequest(&pb.SendSignalRequest{Process: &pb.ProcessSelector{Selector: &pb.ProcessSelector_Pid{Pid: 999999}}, Signal: pb.Signal_SIGNAL_SIGTERM}))
			return err
		}, connect.CodeNotFound},
		{"unknown tag", func() error {
			st, err := e.proc.Connect(ctx, connect.NewRequest(&pb.ConnectRequest{Process: &pb.ProcessSelector{Selector: &pb.ProcessSelector_Tag{Tag: "nope"}}}))
			if err != nil {
				return err
			}
			defer st.Close()
			for st.Receive() {
			}
			return st.Err()
		}, connect.CodeNotFound},
		{"invalid signal", func() error {
			_, err := e.proc.SendSignal(ctx, connect.NewRequest(&pb.SendSignalRequest{Process: pidSel, Signal: pb.Signal(3)}))
			return err
		}, connect.CodeInvalidArgument},
		{"resize without pty", func() error {
			_, err := e.proc.Update(ctx, connect.NewRequest(&pb.UpdateRequest{Process: pidSel, Pty: &pb.PTY{Size: &pb.PTY_Size{Cols: 10, Rows: 10}}}))
			return err
		}, connect.CodeFailedPrecondition},
		{"input with stdin off", func() error {
			_, err := e.proc.SendInput(ctx, connect.NewRequest(&pb.SendInputRequest{Process: pidSel, Input: &pb.ProcessInput{Input: &pb.ProcessInput_Stdin{Stdin: []byte("x")}}}))
			return err
		}, connect.CodeFailedPrecondition},
		{"empty input", func() error {
			_, err := e.proc.SendInput(ctx, connect.NewRequest(&pb.SendInputRequest{Process: pidSel}))
			return err
		}, connect.CodeInvalidArgument},
		{"duplicate tag", func() error {
			_, err := e.run(ctx, &pb.StartRequest{Process: &pb.ProcessConfig{Cmd: "true"}, Tag: new("sleeper")}, nil)
			return err
		}, connect.CodeAlreadyExists},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.call()
			if codeOf(err) != tc.want {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
		})
	}
	// List shows it with its tag, then SIGTERM ends it.
	lr, err := e.proc.List(ctx, connect.NewRequest(&pb.ListRequest{}))
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, p := range lr.Msg.Processes {
		if p.Pid == pid && p.GetTag() == "sleeper" && p.GetConfig().GetCmd() == "sleep" {
			found = true
		}
	}
	if !found {
		t.Fatalf("list %v lacks pid %d", lr.Msg.Processes, pid)
	}
	if _, err := e.proc.SendSignal(ctx, connect.NewRequest(&pb.SendSignalRequest{Process: &pb.ProcessSelector{Selector: &pb.ProcessSelector_Tag{Tag: "sleeper"}}, Signal: pb.Signal_SIGNAL_SIGTERM})); err != nil {
		t.Fatalf("signal: %v", err)
	}
	res, err := drain(st, func() *pb.ProcessEvent { return st.Msg().GetEvent() })
	if err != nil {
		t.Fatal(err)
	}
	if res.end == nil || res.end.Status != "signal: terminated" {
		t.Fatalf("end = %v, want terminated", res.end)
	}
	lr, _ = e.proc.List(ctx, connect.NewRequest(&pb.ListRequest{}))
	if len(lr.Msg.Processes) != 0 {
		t.Errorf("list after end = %v", lr.Msg.Processes)
	}
}

func TestConnectReplaysWhatWasMissed(t *testing.T) {
	e := newEnv(t, Config{})
	ctx := ctxT(t, 30*time.Second)
	dir := t.TempDir()
	gate := filepath.Join(dir, "gate")
	script := fmt.Sprintf("echo first; while [ ! -e %s ]; do sleep 0.02; done; echo second; echo third >&2; sleep 30", gate)
	sctx, scancel := context.WithCancel(ctx)
	_, st := e.startBG(t, sctx, &pb.StartRequest{Process: &pb.ProcessConfig{Cmd: "/bin/sh", Args: []string{"-c", script}}, Tag: new("job")})
	// Read "first", then detach.
	if !st.Receive() || string(st.Msg().GetEvent().GetData().GetStdout()) != "first\n" {
		t.Fatalf("want first output, got %v %v", st.Msg(), st.Err())
	}
	scancel()
	st.Close()
	// Output produced while nobody is attached. Give the server time to see
	// the detach first: output racing with it may count as delivered.
	time.Sleep(time.Second)
	if err := os.WriteFile(gate, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond)
	cst, err := e.proc.Connect(ctx, connect.NewRequest(&pb.ConnectRequest{Process: &pb.ProcessSelector{Selector: &pb.ProcessSelector_Tag{Tag: "job"}}}))
	if err != nil {
		t.Fatal(err)
	}
	defer cst.Close()
	if !cst.Receive() || cst.Msg().GetEvent().GetStart() == nil {
		t.Fatalf("connect: first event is not start: %v %v", cst.Msg(), cst.Err())
	}
	res := &result{}
	deadline := time.After(5 * time.Second)
	for res.stdout.String() != "second\n" || res.stderr.String() != "third\n" {
		got := make(chan bool, 1)
		go func() { got <- cst.Receive() }()
		select {
		case ok := <-got:
			if !ok {
				t.Fatalf("stream ended: %v", cst.Err())
			}
			collect(res, cst.Msg().GetEvent())
		case <-deadline:
			t.Fatalf("replay: stdout %q stderr %q, want second/third (and not first)", res.stdout.String(), res.stderr.String())
		}
	}
	if _, err := e.proc.SendSignal(ctx, connect.NewRequest(&pb.SendSignalRequest{Process: &pb.ProcessSelector{Selector: &pb.ProcessSelector_Tag{Tag: "job"}}, Signal: pb.Signal_SIGNAL_SIGKILL})); err != nil {
		t.Fatal(err)
	}
	end, err := drain(cst, func() *pb.ProcessEvent { return cst.Msg().GetEvent() })
	if err != nil || end.end == nil || end.end.Status != "signal: killed" {
		t.Fatalf("end after kill = %v, %v", end.end, err)
	}
}

func TestPTYInteractiveShell(t *testing.T) {
	e := newEnv(t, Config{})
	ctx := ctxT(t, 30*time.Second)
	pid, st := e.startBG(t, ctx, &pb.StartRequest{
		Process: &pb.ProcessConfig{Cmd: "/bin/sh", Envs: map[string]string{"PS1": "$ "}},
		Pty:     &pb.PTY{Size: &pb.PTY_Size{Cols: 80, Rows: 24}},
	})
	sel := &pb.ProcessSelector{Selector: &pb.ProcessSelector_Pid{Pid: pid}}
	out := make(chan string, 1024)
	endc := make(chan *pb.ProcessEvent_EndEvent, 1)
	go func() {
		for st.Receive() {
			ev := st.Msg().GetEvent()
			if d := ev.GetData(); d != nil {
				if d.GetStdout() != nil || d.GetStderr() != nil {
					out <- "UNEXPECTED NON-PTY OUTPUT"
				}
				out <- string(d.GetPty())
			}
			if end := ev.GetEnd(); end != nil {
				endc <- end
				return
			}
		}
	}()
	seen := ""
	expect := func(want string) {
		t.Helper()
		deadline := time.After(10 * time.Second)
		for !strings.Contains(seen, want) {
			select {
			case s := <-out:
				seen += s
			case <-deadline:
				t.Fatalf("terminal never showed %q; got %q", want, seen)
			}
		}
		// Keep what came after the match for the next expectation.
		seen = seen[strings.Index(seen, want)+len(want):]
	}
	input := func(s string) {
		t.Helper()
		if _, err := e.proc.SendInput(ctx, connect.NewRequest(&pb.SendInputRequest{Process: sel, Input: &pb.ProcessInput{Input: &pb.ProcessInput_Pty{Pty: []byte(s)}}})); err != nil {
			t.Fatalf("input: %v", err)
		}
	}
	input("stty size; tty\n")
	expect("24 80")
	expect("/dev/pts/")
	if _, err := e.proc.Update(ctx, connect.NewRequest(&pb.UpdateRequest{Process: sel, Pty: &pb.PTY{Size: &pb.PTY_Size{Cols: 132, Rows: 50}}})); err != nil {
		t.Fatalf("resize: %v", err)
	}
	if _, err := e.proc.Update(ctx, connect.NewRequest(&pb.UpdateRequest{Process: sel, Pty: &pb.PTY{Size: &pb.PTY_Size{Cols: 0, Rows: 50}}})); codeOf(err) != connect.CodeInvalidArgument {
		t.Fatalf("resize to 0 cols: %v, want InvalidArgument", err)
	}
	input("stty size\n")
	expect("50 132")
	input("exit 7\n")
	select {
	case end := <-endc:
		if end.ExitCode != 7 {
			t.Fatalf("exit code %d, want 7", end.ExitCode)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("shell did not exit")
	}
}

// children returns the pids whose parent is us, and how many are zombies.
func children(t *testing.T) (all, zombies int) {
	t.Helper()
	ents, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
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
	return all, zombies
}

func countFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

func TestManyShortProcesses(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: skipping 2000 processes")
	}
	e := newEnv(t, Config{})
	ctx := ctxT(t, 5*time.Minute)
	// Warm up the connection and the runtime so their fds are in the baseline.
	if _, err := e.run(ctx, &pb.StartRequest{Process: &pb.ProcessConfig{Cmd: "true"}}, nil); err != nil {
		t.Fatal(err)
	}
	before := countFDs(t)
	one := func(i int) error {
		res, err := e.run(ctx, &pb.StartRequest{Process: &pb.ProcessConfig{Cmd: "/bin/sh", Args: []string{"-c", "echo " + strconv.Itoa(i)}}}, nil)
		if err != nil {
			return err
		}
		if res.end == nil || res.end.ExitCode != 0 || res.stdout.String() != strconv.Itoa(i)+"\n" {
			return fmt.Errorf("process %d: end %v stdout %q", i, res.end, res.stdout.String())
		}
		return nil
	}
	t.Run("sequential", func(t *testing.T) {
		for i := range 1000 {
			if err := one(i); err != nil {
				t.Fatal(err)
			}
		}
	})
	t.Run("50 concurrent", func(t *testing.T) {
		var wg sync.WaitGroup
		errc := make(chan error, 1000)
		sem := make(chan struct{}, 50)
		for i := range 1000 {
			wg.Add(1)
			sem <- struct{}{}
			go func() {
				defer wg.Done()
				defer func() { <-sem }()
				if err := one(i); err != nil {
					errc <- err
				}
			}()
		}
		wg.Wait()
		close(errc)
		for err := range errc {
			t.Error(err)
		}
	})
	// Exit statuses are delivered before End, so nothing may be left.
	if all, z := children(t); all != 0 || z != 0 {
		t.Errorf("%d children (%d zombies) left", all, z)
	}
	e.hc.CloseIdleConnections()
	var after int
	for range 50 { // closing idle conns is asynchronous on the server side
		if after = countFDs(t); after <= before {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if after > before {
		t.Errorf("fds: %d before, %d after: leak", before, after)
	}
}

func TestCrashingChildDoesNotHurtEnvd(t *testing.T) {
	e := newEnv(t, Config{})
	ctx := ctxT(t, 30*time.Second)
	// A segfaulting child, then a burst of forks that exit, then envd still answers.
	if res, err := e.run(ctx, sh("kill -SEGV $$"), nil); err != nil || res.end.Status != "signal: segmentation fault" {
		t.Fatalf("segv: %v %v", res, err)
	}
	if res, err := e.run(ctx, sh("for i in $(seq 200); do (true) & done; wait; echo ok"), nil); err != nil || res.stdout.String() != "ok\n" {
		t.Fatalf("fork burst: %v", err)
	}
	if res, err := e.run(ctx, sh("echo alive"), nil); err != nil || res.stdout.String() != "alive\n" {
		t.Fatalf("after faults: %v", err)
	}
}

func TestInputToProcessThatNeverReads(t *testing.T) {
	e := newEnv(t, Config{})
	ctx := ctxT(t, 30*time.Second)
	pid, st := e.startBG(t, ctx, &pb.StartRequest{Process: &pb.ProcessConfig{Cmd: "sleep", Args: []string{"30"}}})
	defer st.Close()
	sel := &pb.ProcessSelector{Selector: &pb.ProcessSelector_Pid{Pid: pid}}
	big := make([]byte, 4<<20) // far more than a pipe holds
	sctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
	defer cancel()
	_, err := e.proc.SendInput(sctx, connect.NewRequest(&pb.SendInputRequest{Process: sel, Input: &pb.ProcessInput{Input: &pb.ProcessInput_Stdin{Stdin: big}}}))
	if c := codeOf(err); c != connect.CodeDeadlineExceeded && c != connect.CodeCanceled {
		t.Fatalf("blocked input: %v, want a deadline error", err)
	}
	// The pipe stays full, but envd and the process's other calls are fine.
	if _, err := e.proc.List(ctx, connect.NewRequest(&pb.ListRequest{})); err != nil {
		t.Fatalf("list after a timed-out write: %v", err)
	}
	if _, err := e.proc.SendSignal(ctx, connect.NewRequest(&pb.SendSignalRequest{Process: sel, Signal: pb.Signal_SIGNAL_SIGKILL})); err != nil {
		t.Fatal(err)
	}
}

func TestReplayIsBounded(t *testing.T) {
	e := newEnv(t, Config{})
	ctx := ctxT(t, 30*time.Second)
	dir := t.TempDir()
	gate := filepath.Join(dir, "gate")
	// 5 MiB while detached, then a marker, then wait to be killed.
	script := fmt.Sprintf("while [ ! -e %s ]; do sleep 0.02; done; head -c 5242880 /dev/zero | tr '\\0' a; echo END; sleep 30", gate)
	sctx, scancel := context.WithCancel(ctx)
	pid, st := e.startBG(t, sctx, &pb.StartRequest{Process: &pb.ProcessConfig{Cmd: "/bin/sh", Args: []string{"-c", script}}})
	scancel()
	st.Close()
	time.Sleep(time.Second)
	os.WriteFile(gate, nil, 0o644)
	time.Sleep(time.Second)
	cst, err := e.proc.Connect(ctx, connect.NewRequest(&pb.ConnectRequest{Process: &pb.ProcessSelector{Selector: &pb.ProcessSelector_Pid{Pid: pid}}}))
	if err != nil {
		t.Fatal(err)
	}
	defer cst.Close()
	res := &result{}
	for !strings.HasSuffix(res.stdout.String(), "END\n") && cst.Receive() {
		collect(res, cst.Msg().GetEvent())
	}
	got := res.stdout.Len()
	// At most ReplayBytes (1 MiB) plus one chunk of slack, and the newest output.
	if got > 1<<20+32<<10 || got < 1<<20-32<<10 {
		t.Errorf("replayed %d bytes, want about 1 MiB (the bound)", got)
	}
	e.proc.SendSignal(ctx, connect.NewRequest(&pb.SendSignalRequest{Process: &pb.ProcessSelector{Selector: &pb.ProcessSelector_Pid{Pid: pid}}, Signal: pb.Signal_SIGNAL_SIGKILL}))
}

// With the Wrenn-Detach header, Start answers only the start event and every
// byte of output waits for Connect, even output printed at once.
func TestStartDetachedKeepsAllOutputForConnect(t *testing.T) {
	e := newEnv(t, Config{})
	ctx := ctxT(t, 30*time.Second)
	req := connect.NewRequest(&pb.StartRequest{
		Process: &pb.ProcessConfig{Cmd: "/bin/sh", Args: []string{"-c", "echo one; echo two >&2; sleep 0.2; echo three"}},
		Tag:     new("detached"),
	})
	req.Header().Set(envdwire.DetachHeader, "true")
	st, err := e.proc.Start(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	var events int
	for st.Receive() {
		events++
		if st.Msg().GetEvent().GetStart() == nil {
			t.Fatalf("detached start sent more than the start event: %v", st.Msg())
		}
	}
	if st.Err() != nil || events != 1 {
		t.Fatalf("detached start: %d events, err %v; want exactly the start event", events, st.Err())
	}
	st.Close()
	cst, err := e.proc.Connect(ctx, connect.NewRequest(&pb.ConnectRequest{Process: &pb.ProcessSelector{Selector: &pb.ProcessSelector_Tag{Tag: "detached"}}}))
	if err != nil {
		t.Fatal(err)
	}
	defer cst.Close()
	res, err := drain(cst, func() *pb.ProcessEvent { return cst.Msg().GetEvent() })
	if err != nil || res.stdout.String() != "one\nthree\n" || res.stderr.String() != "two\n" || res.end == nil || res.end.ExitCode != 0 {
		t.Fatalf("connect after detached start: stdout %q stderr %q end %v err %v", res.stdout.String(), res.stderr.String(), res.end, err)
	}
}
