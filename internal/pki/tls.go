package pki

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"
)

// Both sides speak TLS 1.3 and HTTP/1.1, as the plain mode does, so the
// two modes differ only by the encryption.
var nextProtos = []string{"http/1.1"}

// HostCertStore holds an agent's current leaf and the CA it trusts;
// swapped atomically, read at every handshake, so a renewed certificate
// serves new connections while open ones carry on.
type HostCertStore struct {
	cur atomic.Pointer[hostMaterial]
}

type hostMaterial struct {
	cert  tls.Certificate
	roots *x509.CertPool
	caPEM []byte
}

// Set checks and installs a leaf: key and certificate must match, the leaf
// must chain to caPEM and be valid at now.
func (s *HostCertStore) Set(certPEM, keyPEM, caPEM []byte, now time.Time) error {
	m, err := parseHostMaterial(certPEM, keyPEM, caPEM, now)
	if err != nil {
		return err
	}
	s.cur.Store(m)
	return nil
}

// CheckHostMaterial is Set's check alone.
func CheckHostMaterial(certPEM, keyPEM, caPEM []byte, now time.Time) error {
	_, err := parseHostMaterial(certPEM, keyPEM, caPEM, now)
	return err
}

func parseHostMaterial(certPEM, keyPEM, caPEM []byte, now time.Time) (*hostMaterial, error) {
	ca, err := ParseCert(caPEM)
	if err != nil {
		return nil, fmt.Errorf("ca_cert_pem: %w", err)
	}
	if _, err := ParseKey(keyPEM); err != nil {
		return nil, fmt.Errorf("key_pem: %w", err)
	}
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("cert_pem and key_pem do not form a pair: %w", err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca)
	if _, err := pair.Leaf.Verify(x509.VerifyOptions{Roots: roots, CurrentTime: now,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err != nil {
		return nil, fmt.Errorf("cert_pem: %w", err)
	}
	return &hostMaterial{cert: pair, roots: roots, caPEM: caPEM}, nil
}

// Loaded says whether a leaf is installed.
func (s *HostCertStore) Loaded() bool { return s.cur.Load() != nil }

// Leaf is the current certificate (nil before Set).
func (s *HostCertStore) Leaf() *x509.Certificate {
	if m := s.cur.Load(); m != nil {
		return m.cert.Leaf
	}
	return nil
}

// GetCertificate is tls.Config.GetCertificate.
func (s *HostCertStore) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	m := s.cur.Load()
	if m == nil {
		return nil, errors.New("no host certificate loaded")
	}
	return &m.cert, nil
}

// ServerConfig is the agent's listener configuration: TLS 1.3, the
// store's leaf, and a client certificate required that must be the control
// plane's, issued by the store's CA. now may be nil (time.Now).
func (s *HostCertStore) ServerConfig(now func() time.Time) *tls.Config {
	if now == nil {
		now = time.Now
	}
	return &tls.Config{
		MinVersion:     tls.VersionTLS13,
		NextProtos:     nextProtos,
		GetCertificate: s.GetCertificate,
		// Verified below against the store's CA of the moment.
		ClientAuth: tls.RequireAnyClientCert,
		Time:       now,
		VerifyConnection: func(cs tls.ConnectionState) error {
			m := s.cur.Load()
			if m == nil {
				return errors.New("no host certificate loaded")
			}
			if err := VerifyControlPlane(cs.PeerCertificates, m.roots, now()); err != nil {
				return fmt.Errorf("refused client: %w", err)
			}
			return nil
		},
	}
}

// CPCertStore holds the control plane's client certificate, issued from the
// CA at start and renewed (Run) long before it expires; the swap is atomic
// and GetClientCertificate reads it at every handshake, so no restart and
// no failed call.
type CPCertStore struct {
	ca  *CA
	now func() time.Time
	ttl time.Duration
	cur atomic.Pointer[tls.Certificate]
}

// NewCPCertStore issues the first certificate. now may be nil (time.Now);
// ttl 0 is ClientCertTTL.
func NewCPCertStore(ca *CA, now func() time.Time, ttl time.Duration) (*CPCertStore, error) {
	if now == nil {
		now = time.Now
	}
	if ttl <= 0 {
		ttl = ClientCertTTL
	}
	s := &CPCertStore{ca: ca, now: now, ttl: ttl}
	if err := s.Renew(); err != nil {
		return nil, err
	}
	return s, nil
}

// CA is the authority the store issues from.
func (s *CPCertStore) CA() *CA { return s.ca }

// Now is the store's clock.
func (s *CPCertStore) Now() time.Time { return s.now() }

// Renew issues a new certificate and swaps it in.
func (s *CPCertStore) Renew() error {
	cert, _, err := s.ca.IssueClient(s.now(), s.ttl)
	if err != nil {
		return fmt.Errorf("issue control plane client certificate: %w", err)
	}
	s.cur.Store(&cert)
	return nil
}

// Current is the certificate in use.
func (s *CPCertStore) Current() *x509.Certificate { return s.cur.Load().Leaf }

// GetClientCertificate is tls.Config.GetClientCertificate.
func (s *CPCertStore) GetClientCertificate(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
	return s.cur.Load(), nil
}

// Run renews every interval (0: half the lifetime) until ctx ends; a
// failed renewal is logged and retried a minute later, while the current
// certificate still serves.
func (s *CPCertStore) Run(ctx context.Context, interval time.Duration, log *slog.Logger) {
	if interval <= 0 {
		interval = s.ttl / 2
	}
	wait := interval
	for {
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		if err := s.Renew(); err != nil {
			log.Error("renew the control plane's client certificate", "err", err, "expires_at", s.Current().NotAfter)
			wait = min(time.Minute, interval)
			continue
		}
		wait = interval
		log.Info("control plane client certificate renewed", "expires_at", s.Current().NotAfter)
	}
}

// ClientConfig is the configuration to dial hostID: TLS 1.3, this store's
// client certificate, and a server that must present hostID's leaf issued
// by the CA with one of the fingerprints on record.
func (s *CPCertStore) ClientConfig(hostID string, fingerprints ...string) *tls.Config {
	return &tls.Config{
		MinVersion:           tls.VersionTLS13,
		NextProtos:           nextProtos,
		GetClientCertificate: s.GetClientCertificate,
		Time:                 s.now,
		// The usual name check is replaced by VerifyHost, which checks the
		// chain, the host id (a URI SAN) and the fingerprint.
		InsecureSkipVerify: true,
		VerifyConnection: func(cs tls.ConnectionState) error {
			return VerifyHost(cs.PeerCertificates, s.ca.Pool, s.now(), hostID, fingerprints...)
		},
	}
}
