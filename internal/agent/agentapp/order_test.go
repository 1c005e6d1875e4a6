package agentapp

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"testing"
	"time"

	"github.com/wrenn-dev/wrenn/internal/config"
	"github.com/wrenn-dev/wrenn/internal/pki"
	"github.com/wrenn-dev/wrenn/internal/testenv"
)

// A control plane marks the host online, and may send it a create, as soon
// as it registers: a call made at that moment, before the agent has even
// read the registration's answer, must be served (over mutual TLS when the
// control plane has a CA) and never refused. Registering before binding the
// port refused it.
func TestCallAtRegistrationIsServed(t *testing.T) {
	ca, _, err := pki.NewCA(time.Now())
	if err != nil {
		t.Fatal(err)
	}
	cp, err := pki.NewCPCertStore(ca, nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	const hostID = "host-aaaaaaaaaaaaaaaaaaaa"
	// issue installs a host certificate as registration does: a key made
	// here, a CSR, a leaf from the control plane's CA.
	var fingerprint string // on record at the control plane
	issue := func(certs *pki.HostCertStore, addr string) error {
		key, err := pki.GenerateKey()
		if err != nil {
			return err
		}
		csrPEM, err := pki.NewCSR(key, addr)
		if err != nil {
			return err
		}
		csr, err := pki.ParseCSR(string(csrPEM))
		if err != nil {
			return err
		}
		leaf, err := ca.IssueHost(csr, hostID, addr, time.Now(), time.Hour)
		if err != nil {
			return err
		}
		fingerprint = leaf.Fingerprint
		keyPEM, err := pki.EncodeKey(key)
		if err != nil {
			return err
		}
		return certs.Set(leaf.CertPEM, keyPEM, ca.CertPEM, time.Now())
	}
	tests := []struct {
		name string
		mtls bool
	}{
		{"mutual TLS", true},
		{"plain, control plane without a CA", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			port, err := testenv.FreePort()
			if err != nil {
				t.Fatal(err)
			}
			addr := "127.0.0.1:" + strconv.Itoa(port)
			certs := &pki.HostCertStore{}
			var early net.Conn
			register := func(context.Context) error {
				if tt.mtls {
					if err := issue(certs, addr); err != nil {
						return fmt.Errorf("issue host certificate: %w", err)
					}
				}
				// The control plane has committed the host online: its
				// first call arrives now.
				c, err := net.DialTimeout("tcp", addr, time.Second)
				if err != nil {
					return fmt.Errorf("a call at registration was refused: %w", err)
				}
				early = c
				return nil
			}
			ln, err := listenRegistered(t.Context(), config.Agent{ListenAddr: addr}, certs, register, slog.New(slog.DiscardHandler))
			if err != nil {
				t.Fatal(err)
			}
			defer early.Close()
			hs := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "created") }),
				ReadHeaderTimeout: 5 * time.Second}
			go hs.Serve(ln)
			t.Cleanup(func() { hs.Close() })

			conn := early
			if tt.mtls {
				tc := tls.Client(early, cp.ClientConfig(hostID, fingerprint))
				if err := tc.HandshakeContext(t.Context()); err != nil {
					t.Fatalf("handshake of the call made at registration: %v", err)
				}
				conn = tc
			}
			conn.SetDeadline(time.Now().Add(10 * time.Second))
			req, _ := http.NewRequest(http.MethodPost, "http://"+addr+"/create", nil)
			if err := req.Write(conn); err != nil {
				t.Fatal(err)
			}
			resp, err := http.ReadResponse(bufio.NewReader(conn), req)
			if err != nil {
				t.Fatalf("the call made at registration got no answer: %v", err)
			}
			body, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != http.StatusOK || string(body) != "created" {
				t.Fatalf("answer %d %q", resp.StatusCode, body)
			}
		})
	}
}
