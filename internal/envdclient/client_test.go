package envdclient_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/wrenn-dev/wrenn/internal/envd/envdtest"
	"github.com/wrenn-dev/wrenn/internal/envdclient"
	"github.com/wrenn-dev/wrenn/internal/testenv"
	fspb "github.com/wrenn-dev/wrenn/proto/envd/filesystem"
	procpb "github.com/wrenn-dev/wrenn/proto/envd/process"
)

// These tests run the real envd binary as a host process (host mode).

func startEnvd(t *testing.T) (*envdclient.Client, string) {
	t.Helper()
	root := t.TempDir()
	e := envdtest.Start(t, "127.0.0.1:0", "-root", root)
	c := envdclient.New(e.Addr)
	t.Cleanup(c.Close)
	return c, root
}

func TestClientAgainstRealEnvd(t *testing.T) {
	c, root := startEnvd(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	if err := c.WaitHealthy(ctx, 0); err != nil {
		t.Fatalf("WaitHealthy: %v", err)
	}
	tok := "tok-" + t.Name()
	now := time.Now()
	if err := c.Init(ctx, envdclient.InitRequest{EnvVars: map[string]string{"WRENN_T": "yes"}, AccessToken: &tok, Timestamp: &now}); err != nil {
		t.Fatalf("Init: %v", err)
	}
	if c.Token() != tok {
		t.Fatalf("token not remembered")
	}

	t.Run("token required after init", func(t *testing.T) {
		bad := envdclient.New(c.Addr()[len("http://"):])
		defer bad.Close()
		_, err := bad.Metrics(ctx)
		var he *envdclient.HTTPError
		if !errors.As(err, &he) || he.Status != http.StatusUnauthorized {
			t.Fatalf("metrics without token: %v, want HTTP 401", err)
		}
		_, err = bad.Process.List(ctx, connect.NewRequest(&procpb.ListRequest{}))
		if connect.CodeOf(err) != connect.CodeUnauthenticated {
			t.Fatalf("List without token: %v, want unauthenticated", err)
		}
		if err := bad.Health(ctx); err != nil {
			t.Fatalf("health must not need a token: %v", err)
		}
	})

	t.Run("upload and download stream byte-identical", func(t *testing.T) {
		for _, size := range []int{0, 1, 3<<20 + 17} {
			data := make([]byte, size)
			rand.Read(data)
			n, err := c.UploadFile(ctx, "/data/f.bin", "", bytes.NewReader(data))
			if err != nil || n != int64(size) {
				t.Fatalf("upload %d bytes: n=%d err=%v", size, n, err)
			}
			onDisk, err := os.ReadFile(filepath.Join(root, "data/f.bin"))
			if err != nil || !bytes.Equal(onDisk, data) {
				t.Fatalf("file on disk differs (err %v, len %d want %d)", err, len(onDisk), size)
			}
			rc, sz, err := c.DownloadFile(ctx, "/data/f.bin", "")
			if err != nil {
				t.Fatalf("download: %v", err)
			}
			h := sha256.New()
			got, _ := io.Copy(h, rc)
			rc.Close()
			if got != int64(size) || sz != int64(size) || !bytes.Equal(h.Sum(nil), sha(data)) {
				t.Fatalf("download: got %d bytes (size header %d), want %d identical", got, sz, size)
			}
		}
	})

	t.Run("download errors", func(t *testing.T) {
		tests := []struct {
			path    string
			notFnd  bool
			wantErr bool
		}{
			{"/nope/missing", true, true},
			{"/", false, true},
			{"", false, true},
		}
		for _, tt := range tests {
			_, _, err := c.DownloadFile(ctx, tt.path, "")
			if (err != nil) != tt.wantErr || errors.Is(err, envdclient.ErrNotFound) != tt.notFnd {
				t.Errorf("DownloadFile(%q) = %v, wantErr %v notFound %v", tt.path, err, tt.wantErr, tt.notFnd)
			}
		}
	})

	t.Run("process start sees init env", func(t *testing.T) {
		s, err := c.Process.Start(ctx, connect.NewRequest(&procpb.StartRequest{
			Process: &procpb.ProcessConfig{Cmd: "/bin/sh", Args: []string{"-c", "echo $WRENN_T"}},
		}))
		if err != nil {
			t.Fatalf("start: %v", err)
		}
		var out []byte
		var end *procpb.ProcessEvent_EndEvent
		for s.Receive() {
			ev := s.Msg().GetEvent()
			out = append(out, ev.GetData().GetStdout()...)
			if ev.GetEnd() != nil {
				end = ev.GetEnd()
			}
		}
		if err := s.Err(); err != nil {
			t.Fatalf("stream: %v", err)
		}
		if end == nil || end.ExitCode != 0 || string(out) != "yes\n" {
			t.Fatalf("output %q end %v", out, end)
		}
	})

	t.Run("filesystem and metrics", func(t *testing.T) {
		if _, err := c.Filesystem.MakeDir(ctx, connect.NewRequest(&fspb.MakeDirRequest{Path: "/mk/d"})); err != nil {
			t.Fatalf("mkdir: %v", err)
		}
		if st, err := os.Stat(filepath.Join(root, "mk/d")); err != nil || !st.IsDir() {
			t.Fatalf("dir not made: %v", err)
		}
		m, err := c.Metrics(ctx)
		if err != nil || m.MemTotal == 0 || m.DiskTotal == 0 {
			t.Fatalf("metrics %+v err %v", m, err)
		}
	})
}

func TestWaitHealthyGivesUp(t *testing.T) {
	// Nothing listens on this port: WaitHealthy must end with ctx.
	port, err := testenv.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	c := envdclient.New("127.0.0.1:" + itoa(port))
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	err = c.WaitHealthy(ctx, 0)
	if err == nil || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want deadline exceeded", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("took %v", d)
	}
}

func TestUploadRejectsEmptyPath(t *testing.T) {
	c := envdclient.New("127.0.0.1:1")
	if _, err := c.UploadFile(context.Background(), "", "", bytes.NewReader(nil)); err == nil {
		t.Fatal("empty path accepted")
	}
}

func sha(b []byte) []byte { s := sha256.Sum256(b); return s[:] }

func itoa(n int) string { return strconv.Itoa(n) }

// brokenReader yields its data, then fails: an upload source that breaks off.
type brokenReader struct{ r io.Reader }

func (b *brokenReader) Read(p []byte) (int, error) {
	n, err := b.r.Read(p)
	if errors.Is(err, io.EOF) {
		return n, errors.New("test: source broke off")
	}
	return n, err
}

// A source that fails mid-upload aborts the request: envd keeps the old
// file and leaves no temporary file behind.
func TestUploadSourceErrorKeepsTheTarget(t *testing.T) {
	c, root := startEnvd(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := c.WaitHealthy(ctx, 0); err != nil {
		t.Fatal(err)
	}
	const original = "original content\n"
	if _, err := c.UploadFile(ctx, "/data/keep.txt", "", bytes.NewReader([]byte(original))); err != nil {
		t.Fatal(err)
	}
	for _, size := range []int{0, 1, 300 << 10} {
		src := &brokenReader{r: bytes.NewReader(bytes.Repeat([]byte("x"), size))}
		if _, err := c.UploadFile(ctx, "/data/keep.txt", "", src); err == nil {
			t.Fatalf("upload of a broken %d-byte source succeeded", size)
		}
		if got, err := os.ReadFile(filepath.Join(root, "data/keep.txt")); err != nil || string(got) != original {
			t.Fatalf("after a broken %d-byte upload the file holds %d bytes (%v)", size, len(got), err)
		}
		// envd notices the abort on its own time; its temporary file must go.
		deadline := time.Now().Add(5 * time.Second)
		for {
			ents, err := os.ReadDir(filepath.Join(root, "data"))
			if err == nil && len(ents) == 1 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("data dir after a broken upload: %v %v", ents, err)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
}
