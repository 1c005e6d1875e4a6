package main

import (
	"bytes"
	"context"
	"crypto/sha256"

	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/wrenn-dev/wrenn/internal/envd/envdtest"
	pb "github.com/wrenn-dev/wrenn/proto/envd/process"
	"github.com/wrenn-dev/wrenn/proto/envd/process/processconnect"
)

// maxRSSGrowth is the bound on envd's memory growth while a 1 GiB file goes
// through it each way: streaming must not buffer files.
const maxRSSGrowth = 64 << 20

type chachaReader struct{ r *rand.ChaCha8 }

func (c chachaReader) Read(p []byte) (int, error) { return c.r.Read(p) }

func TestOneGiBRoundTripRSSFlat(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: skipping the 1 GiB transfer")
	}
	const size = 1 << 30
	e := envdtest.Start(t, "127.0.0.1:0")
	// Settle, then take the baseline after one small request.
	http.Get(e.URL + "/health")
	time.Sleep(200 * time.Millisecond)
	base, err := e.RSS()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	p := filepath.Join(dir, "big.bin")
	ctx, stop := context.WithCancel(context.Background())
	peakc := e.PeakRSS(ctx, 20*time.Millisecond)

	// Upload: a deterministic stream hashed on the way.
	up := sha256.New()
	src := io.TeeReader(io.LimitReader(chachaReader{rand.NewChaCha8([32]byte{1})}, size), up)
	t0 := time.Now()
	req, _ := http.NewRequest("POST", e.URL+"/files?path="+p, src)
	req.Header.Set("Content-Type", "application/octet-stream")
	req.ContentLength = size
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		stop()
		t.Fatalf("upload: %v", err)
	}
	io.Copy(io.Discard, res.Body)
	res.Body.Close()
	upDur := time.Since(t0)
	if res.StatusCode != 200 {
		stop()
		t.Fatalf("upload status %d", res.StatusCode)
	}
	if st, err := os.Stat(p); err != nil || st.Size() != size {
		stop()
		t.Fatalf("uploaded file: %v %v", st, err)
	}

	// Download and compare the hash.
	t0 = time.Now()
	res, err = http.Get(e.URL + "/files?path=" + p)
	if err != nil {
		stop()
		t.Fatalf("download: %v", err)
	}
	down := sha256.New()
	n, err := io.Copy(down, res.Body)
	res.Body.Close()
	downDur := time.Since(t0)
	stop()
	peak := <-peakc
	if err != nil || n != size {
		t.Fatalf("download: %d bytes, %v", n, err)
	}
	if !bytes.Equal(up.Sum(nil), down.Sum(nil)) {
		t.Fatal("downloaded content differs from the upload")
	}
	t.Logf("upload %.0f MB/s, download %.0f MB/s, RSS base %d MiB, peak %d MiB",
		float64(size)/1e6/upDur.Seconds(), float64(size)/1e6/downDur.Seconds(), base>>20, peak>>20)
	if peak-base > maxRSSGrowth {
		t.Fatalf("envd RSS grew by %d MiB (base %d MiB, peak %d MiB), bound %d MiB", (peak-base)>>20, base>>20, peak>>20, maxRSSGrowth>>20)
	}
}

func TestHostModeFlagsAndSignals(t *testing.T) {
	root := t.TempDir()
	e := envdtest.Start(t, "127.0.0.1:0", "-root", root)
	res, err := http.Post(e.URL+"/files?path=/inside/root.txt", "application/octet-stream", bytes.NewReader([]byte("x")))
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if _, err := os.Stat(filepath.Join(root, "inside", "root.txt")); res.StatusCode != 200 || err != nil {
		t.Fatalf("-root not applied: %d %v", res.StatusCode, err)
	}
	// SIGTERM: envd stops cleanly.
	e.Cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan error, 1)
	go func() { done <- e.Cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("exit after SIGTERM: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("envd did not stop on SIGTERM")
	}
}

func TestBadFlags(t *testing.T) {
	bin := envdtest.Build(t)
	for _, args := range [][]string{{"-addr", "not-an-address"}, {"-nosuchflag"}, {"-addr", "127.0.0.1:0", "-user", "no-such-user-x"}} {
		cmd := exec.Command(bin, args...)
		out, err := cmd.CombinedOutput()
		if err == nil {
			t.Errorf("envd %v succeeded: %s", args, out)
		}
	}
}

// TestHugeOutputRSSFlat: a process printing 1 GiB, once with nobody attached
// and once with a client that reads slowly, must not grow envd's memory.
func TestHugeOutputRSSFlat(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: skipping the 1 GiB output")
	}
	e := envdtest.Start(t, "127.0.0.1:0")
	pc := processconnect.NewProcessClient(h2cClient(), e.URL)
	http.Get(e.URL + "/health")
	time.Sleep(200 * time.Millisecond)
	base, err := e.RSS()
	if err != nil {
		t.Fatal(err)
	}
	ctx, stop := context.WithCancel(context.Background())
	peakc := e.PeakRSS(ctx, 20*time.Millisecond)
	script := "head -c 1073741824 /dev/zero"
	tests := []struct {
		name   string
		detach bool
	}{{"detached", true}, {"slow reader", false}}
	for _, tc := range tests {
		rctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		st, err := pc.Start(rctx, connect.NewRequest(&pb.StartRequest{Process: &pb.ProcessConfig{Cmd: "/bin/sh", Args: []string{"-c", script}}}))
		if err != nil {
			cancel()
			stop()
			t.Fatal(err)
		}
		if !st.Receive() {
			cancel()
			stop()
			t.Fatalf("%s: no start: %v", tc.name, st.Err())
		}
		if tc.detach {
			st.Close()
			// Nobody reads: envd keeps only the last 1 MiB. Wait for the end.
			for {
				lr, err := pc.List(rctx, connect.NewRequest(&pb.ListRequest{}))
				if err != nil {
					t.Fatal(err)
				}
				if len(lr.Msg.Processes) == 0 {
					break
				}
				time.Sleep(50 * time.Millisecond)
			}
		} else {
			var n int
			for st.Receive() {
				n += len(st.Msg().GetEvent().GetData().GetStdout())
				if n%(64<<20) < 32<<10 {
					time.Sleep(time.Millisecond) // a slow client
				}
				if st.Msg().GetEvent().GetEnd() != nil {
					break
				}
			}
			if n != 1<<30 {
				t.Errorf("slow reader got %d bytes, want 1 GiB", n)
			}
			st.Close()
		}
		cancel()
	}
	stop()
	peak := <-peakc
	t.Logf("RSS base %d MiB, peak %d MiB", base>>20, peak>>20)
	if peak-base > maxRSSGrowth {
		t.Fatalf("envd RSS grew by %d MiB with 1 GiB of output", (peak-base)>>20)
	}
}
