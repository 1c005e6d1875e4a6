package pki

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strings"
	"time"
)

// CSRError is a certificate request the CA refuses (the caller's fault).
type CSRError struct{ Problem string }

func (e *CSRError) Error() string { return "certificate request: " + e.Problem }

func csrErr(format string, args ...any) error {
	return &CSRError{Problem: fmt.Sprintf(format, args...)}
}

// NewCSR makes a certificate request for key naming the host part of
// address (IP or DNS SAN): what an agent sends with its registration and
// every refresh. The key never leaves the host.
func NewCSR(key *ecdsa.PrivateKey, address string) ([]byte, error) {
	tmpl := &x509.CertificateRequest{Subject: pkix.Name{CommonName: "wrenn-host"}}
	if host := addressHost(address); host != "" {
		if ip := net.ParseIP(host); ip != nil {
			tmpl.IPAddresses = []net.IP{ip}
		} else {
			tmpl.DNSNames = []string{host}
		}
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		return nil, fmt.Errorf("create certificate request: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}), nil
}

// addressHost is the host of host:port (or the value itself without a port).
func addressHost(address string) string {
	if h, _, err := net.SplitHostPort(address); err == nil {
		return h
	}
	return address
}

// ParseCSR reads a PEM certificate request and checks what does not depend
// on the host: a valid signature by an ECDSA P-256 key.
func ParseCSR(csrPEM string) (*x509.CertificateRequest, error) {
	b, _ := pem.Decode([]byte(csrPEM))
	if b == nil || b.Type != "CERTIFICATE REQUEST" {
		return nil, csrErr("no PEM CERTIFICATE REQUEST block")
	}
	csr, err := x509.ParseCertificateRequest(b.Bytes)
	if err != nil {
		return nil, csrErr("cannot be parsed: %v", err)
	}
	if pub, ok := csr.PublicKey.(*ecdsa.PublicKey); !ok || pub.Curve != elliptic.P256() {
		return nil, csrErr("the key must be ECDSA P-256")
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, csrErr("bad signature: %v", err)
	}
	return csr, nil
}

// Leaf is an issued certificate.
type Leaf struct {
	Cert        *x509.Certificate
	CertPEM     []byte
	Fingerprint string
}

// IssueHost signs a host leaf for csr: CN and URI SAN naming hostID, the
// IP or DNS SAN of address's host, server authentication only, valid from
// now for ttl. The CSR may ask only for those names (foreign SANs are a
// CSRError); the leaf carries them whatever it asked.
func (ca *CA) IssueHost(csr *x509.CertificateRequest, hostID, address string, now time.Time, ttl time.Duration) (Leaf, error) {
	host := addressHost(address)
	ip := net.ParseIP(host)
	for _, n := range csr.DNSNames {
		if ip != nil || !strings.EqualFold(n, host) {
			return Leaf{}, csrErr("DNS name %q is not the host's address %q", n, host)
		}
	}
	for _, a := range csr.IPAddresses {
		if ip == nil || !a.Equal(ip) {
			return Leaf{}, csrErr("IP address %s is not the host's address %q", a, host)
		}
	}
	for _, u := range csr.URIs {
		if u.String() != HostURI(hostID) {
			return Leaf{}, csrErr("URI %q does not name this host", u)
		}
	}
	if len(csr.EmailAddresses) > 0 {
		return Leaf{}, csrErr("email addresses are not allowed")
	}
	sn, err := serial()
	if err != nil {
		return Leaf{}, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: sn,
		Subject:      pkix.Name{CommonName: hostID},
		URIs:         []*url.URL{mustURL(HostURI(hostID))},
		NotBefore:    now.Add(-backdate),
		NotAfter:     now.Add(ttl),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	if ip != nil {
		tmpl.IPAddresses = []net.IP{ip}
	} else if host != "" {
		tmpl.DNSNames = []string{host}
	}
	return ca.sign(tmpl, csr.PublicKey)
}

// IssueClient makes the control plane's client certificate (and its key,
// made here: the CA's holder is the control plane itself).
func (ca *CA) IssueClient(now time.Time, ttl time.Duration) (tls.Certificate, Leaf, error) {
	key, err := GenerateKey()
	if err != nil {
		return tls.Certificate{}, Leaf{}, err
	}
	sn, err := serial()
	if err != nil {
		return tls.Certificate{}, Leaf{}, err
	}
	leaf, err := ca.sign(&x509.Certificate{
		SerialNumber: sn,
		Subject:      pkix.Name{CommonName: ControlPlaneCN},
		URIs:         []*url.URL{mustURL(ControlPlaneURI)},
		NotBefore:    now.Add(-backdate),
		NotAfter:     now.Add(ttl),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}, &key.PublicKey)
	if err != nil {
		return tls.Certificate{}, Leaf{}, err
	}
	return tls.Certificate{Certificate: [][]byte{leaf.Cert.Raw}, PrivateKey: key, Leaf: leaf.Cert}, leaf, nil
}

func (ca *CA) sign(tmpl *x509.Certificate, pub any) (Leaf, error) {
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, pub, ca.Key)
	if err != nil {
		return Leaf{}, fmt.Errorf("sign certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return Leaf{}, fmt.Errorf("parse issued certificate: %w", err)
	}
	return Leaf{Cert: cert, CertPEM: EncodeCert(der), Fingerprint: Fingerprint(cert)}, nil
}

// ErrWrongPeer: the peer's certificate is valid but names someone else.
var ErrWrongPeer = errors.New("the peer's certificate names another identity")

// verifyPeer checks that chain's leaf chains to roots at now for usage and
// names want.
func verifyPeer(chain []*x509.Certificate, roots *x509.CertPool, now time.Time, usage x509.ExtKeyUsage, want string) (*x509.Certificate, error) {
	if len(chain) == 0 {
		return nil, errors.New("no certificate presented")
	}
	inter := x509.NewCertPool()
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	leaf := chain[0]
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, CurrentTime: now,
		KeyUsages: []x509.ExtKeyUsage{usage}}); err != nil {
		return nil, fmt.Errorf("verify certificate: %w", err)
	}
	if got := identity(leaf); got != want {
		return nil, fmt.Errorf("%w: want %s, got %q", ErrWrongPeer, want, got)
	}
	return leaf, nil
}

// VerifyControlPlane accepts only the control plane's client certificate
// issued by roots (an agent's check of its caller).
func VerifyControlPlane(chain []*x509.Certificate, roots *x509.CertPool, now time.Time) error {
	_, err := verifyPeer(chain, roots, now, x509.ExtKeyUsageClientAuth, ControlPlaneURI)
	return err
}

// ErrFingerprint: the host's certificate is not one the control plane
// issued to it last (replaced by a new registration, or the host deleted).
var ErrFingerprint = errors.New("the host's certificate is not the one on record")

// VerifyHost accepts only hostID's server certificate issued by roots
// whose fingerprint is one of known (the control plane's check of an agent).
func VerifyHost(chain []*x509.Certificate, roots *x509.CertPool, now time.Time, hostID string, known ...string) error {
	leaf, err := verifyPeer(chain, roots, now, x509.ExtKeyUsageServerAuth, HostURI(hostID))
	if err != nil {
		return err
	}
	fp := Fingerprint(leaf)
	for _, k := range known {
		if k != "" && k == fp {
			return nil
		}
	}
	return fmt.Errorf("%w (host %s, fingerprint %s)", ErrFingerprint, hostID, fp)
}
