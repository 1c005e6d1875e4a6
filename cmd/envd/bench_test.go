package main

import (
	"context"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/wrenn-dev/wrenn/internal/envd/envdtest"
	pb "github.com/wrenn-dev/wrenn/proto/envd/process"
	"github.com/wrenn-dev/wrenn/proto/envd/process/processconnect"
)

// benchFileSize is the payload of one upload or download.
const benchFileSize = 64 << 20

func h2cClient() *http.Client {
	var p http.Protocols
	p.SetUnencryptedHTTP2(true)
	return &http.Client{Transport: &http.Transport{Protocols: &p}}
}

// BenchmarkExecTrue measures Start of `true` until its End event.
func BenchmarkExecTrue(b *testing.B) {
	e := envdtest.Start(b, "127.0.0.1:0")
	client := processconnect.NewProcessClient(h2cClient(), e.URL)
	ctx := context.Background()
	run := func() {
		st, err := client.Start(ctx, connect.NewRequest(&pb.StartRequest{Process: &pb.ProcessConfig{Cmd: "true"}}))
		if err != nil {
			b.Fatal(err)
		}
		ended := false
		for st.Receive() {
			if st.Msg().GetEvent().GetEnd() != nil {
				ended = true
			}
		}
		st.Close()
		if !ended || st.Err() != nil {
			b.Fatalf("no end event: %v", st.Err())
		}
	}
	run() // warm the connection
	lat := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for range b.N {
		t0 := time.Now()
		run()
		lat = append(lat, time.Since(t0))
	}
	b.StopTimer()
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(lat[min(len(lat)-1, len(lat)*99/100)].Microseconds())/1000, "p99-ms")
}

// baseline is a plain net/http server doing io.Copy both ways: the
// reference for envd's /files throughput on the same machine.
func baseline(b *testing.B) string {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /files", func(w http.ResponseWriter, r *http.Request) {
		f, err := os.Create(r.URL.Query().Get("path"))
		if err != nil {
			http.Error(w, err.Error(), 500)
			return
		}
		defer f.Close()
		if _, err := io.Copy(f, r.Body); err != nil {
			http.Error(w, err.Error(), 500)
		}
	})
	mux.HandleFunc("GET /files", func(w http.ResponseWriter, r *http.Request) {
		f, err := os.Open(r.URL.Query().Get("path"))
		if err != nil {
			http.Error(w, err.Error(), 404)
			return
		}
		defer f.Close()
		io.Copy(w, f)
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	srv := &http.Server{Handler: mux}
	go srv.Serve(ln)
	b.Cleanup(func() { srv.Close() })
	return "http://" + ln.Addr().String()
}

func BenchmarkFiles(b *testing.B) {
	e := envdtest.Start(b, "127.0.0.1:0")
	targets := []struct{ name, url string }{{"envd", e.URL}, {"baseline-iocopy", baseline(b)}}
	dir := b.TempDir()
	payload := make([]byte, benchFileSize)
	rand.NewChaCha8([32]byte{2}).Read(payload)
	client := &http.Client{}
	for _, tg := range targets {
		p := filepath.Join(dir, tg.name+".bin")
		b.Run("upload/"+tg.name, func(b *testing.B) {
			b.SetBytes(benchFileSize)
			for range b.N {
				req, _ := http.NewRequest("POST", tg.url+"/files?path="+p, bytesReader(payload))
				req.Header.Set("Content-Type", "application/octet-stream")
				res, err := client.Do(req)
				if err != nil {
					b.Fatal(err)
				}
				io.Copy(io.Discard, res.Body)
				res.Body.Close()
				if res.StatusCode != 200 {
					b.Fatalf("status %d", res.StatusCode)
				}
			}
		})
		b.Run("download/"+tg.name, func(b *testing.B) {
			b.SetBytes(benchFileSize)
			for range b.N {
				res, err := client.Get(tg.url + "/files?path=" + p)
				if err != nil {
					b.Fatal(err)
				}
				n, _ := io.Copy(io.Discard, res.Body)
				res.Body.Close()
				if n != benchFileSize {
					b.Fatalf("got %d bytes", n)
				}
			}
		})
	}
}

type sliceReader struct {
	b []byte
	i int
}

func bytesReader(b []byte) *sliceReader { return &sliceReader{b: b} }

func (r *sliceReader) Read(p []byte) (int, error) {
	if r.i >= len(r.b) {
		return 0, io.EOF
	}
	n := copy(p, r.b[r.i:])
	r.i += n
	return n, nil
}

// BenchmarkStart measures exec of envd until GET /health answers.
func BenchmarkStart(b *testing.B) {
	envdtest.Build(b) // compile outside the measured loop
	b.ResetTimer()
	var total time.Duration
	for range b.N {
		t0 := time.Now()
		e := envdtest.Start(b, "127.0.0.1:0")
		for {
			res, err := http.Get(e.URL + "/health")
			if err == nil {
				res.Body.Close()
				if res.StatusCode == http.StatusNoContent {
					break
				}
			}
			time.Sleep(time.Millisecond)
		}
		total += time.Since(t0)
		e.Stop()
	}
	b.ReportMetric(float64(total.Microseconds())/1000/float64(b.N), "ms-to-health")
}

// BenchmarkIdleRSS reports envd's resident memory after start and one call.
func BenchmarkIdleRSS(b *testing.B) {
	var sum int64
	for range b.N {
		e := envdtest.Start(b, "127.0.0.1:0")
		res, err := http.Get(e.URL + "/health")
		if err != nil {
			b.Fatal(err)
		}
		res.Body.Close()
		time.Sleep(100 * time.Millisecond)
		rss, err := e.RSS()
		if err != nil {
			b.Fatal(err)
		}
		sum += rss
		e.Stop()
	}
	b.ReportMetric(float64(sum)/float64(b.N)/(1<<20), "MiB-RSS")
}
