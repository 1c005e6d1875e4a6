// Package pki is Wrenn's internal certificate authority, shared by the
// control plane and the host agents: loading and checking the CA (ECDSA
// P-256), issuing host leaves from the agents' CSRs and the control plane's
// own client certificate, the identities both sides check in each other's
// certificates, and fingerprints.
//
// Identities are URI SANs: wrenn://host/<host id> for an agent (a server
// certificate) and wrenn://control-plane for the control plane (a client
// certificate). A peer is accepted only when its chain reaches the CA with
// the right extended key usage and it names the identity expected, so a
// host's leaf is never accepted as the control plane, nor as another host.
package pki

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/wrenn-dev/wrenn/internal/atomicfile"
)

// Lifetimes of what the CA issues.
const (
	// CALifetime is the lifetime of a CA made by NewCA.
	CALifetime = 10 * 365 * 24 * time.Hour
	// HostCertTTL is a host leaf's lifetime.
	HostCertTTL = 7 * 24 * time.Hour
	// ClientCertTTL is the control plane's client certificate lifetime.
	ClientCertTTL = 24 * time.Hour
	// backdate covers clocks a little behind the issuer's.
	backdate = 5 * time.Minute
)

// File names of a CA directory written by WriteCA.
const (
	CACertFile = "ca.crt"
	CAKeyFile  = "ca.key"
)

// CA is a loaded, checked certificate authority.
type CA struct {
	Cert    *x509.Certificate
	Key     *ecdsa.PrivateKey
	CertPEM []byte
	Pool    *x509.CertPool
}

// ReadSource returns value itself when it is PEM text, else the content of
// the file it names: WRENN_CA_CERT and WRENN_CA_KEY accept either.
func ReadSource(value string) ([]byte, error) {
	if strings.Contains(value, "-----BEGIN ") {
		return []byte(value), nil
	}
	raw, err := os.ReadFile(value)
	if err != nil {
		return nil, fmt.Errorf("is neither PEM text nor a readable file: %w", err)
	}
	return raw, nil
}

// LoadCA reads the CA from two sources (PEM text or file paths, see
// ReadSource) and checks it like ParseCA.
func LoadCA(certSrc, keySrc string, now time.Time) (ca *CA, certErr, keyErr error) {
	certPEM, err := ReadSource(certSrc)
	if err != nil {
		return nil, err, nil
	}
	keyPEM, err := ReadSource(keySrc)
	if err != nil {
		return nil, nil, err
	}
	return ParseCA(certPEM, keyPEM, now)
}

// ParseCA checks a CA certificate and key given as PEM: P-256, a CA
// certificate (CA:TRUE) that may sign certificates, valid at now, and the
// key its public key's. certErr and keyErr tell which of the two is at
// fault.
func ParseCA(certPEM, keyPEM []byte, now time.Time) (ca *CA, certErr, keyErr error) {
	cert, err := ParseCert(certPEM)
	if err != nil {
		return nil, err, nil
	}
	pub, ok := cert.PublicKey.(*ecdsa.PublicKey)
	switch {
	case !ok || pub.Curve != elliptic.P256():
		return nil, errors.New("the CA key must be ECDSA P-256"), nil
	case !cert.BasicConstraintsValid || !cert.IsCA:
		return nil, errors.New("the certificate is not a CA (basic constraints CA:TRUE missing)"), nil
	case cert.KeyUsage != 0 && cert.KeyUsage&x509.KeyUsageCertSign == 0:
		return nil, errors.New("the CA certificate may not sign certificates (key usage lacks certSign)"), nil
	}
	if err := CheckValidity(cert, now); err != nil {
		return nil, err, nil
	}
	key, err := ParseKey(keyPEM)
	if err != nil {
		return nil, nil, err
	}
	if !key.PublicKey.Equal(pub) {
		return nil, nil, errors.New("the key does not belong to the CA certificate")
	}
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &CA{Cert: cert, Key: key, CertPEM: EncodeCert(cert.Raw), Pool: pool}, nil, nil
}

// CheckValidity fails when cert is not valid at now.
func CheckValidity(cert *x509.Certificate, now time.Time) error {
	if now.Before(cert.NotBefore) {
		return fmt.Errorf("the certificate is not valid before %s", cert.NotBefore.UTC().Format(time.RFC3339))
	}
	if !now.Before(cert.NotAfter) {
		return fmt.Errorf("the certificate expired at %s", cert.NotAfter.UTC().Format(time.RFC3339))
	}
	return nil
}

// ParseCert reads the first certificate of a PEM block list.
func ParseCert(certPEM []byte) (*x509.Certificate, error) {
	b, _ := pem.Decode(certPEM)
	if b == nil || b.Type != "CERTIFICATE" {
		return nil, errors.New("no PEM CERTIFICATE block")
	}
	cert, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		return nil, fmt.Errorf("parse certificate: %w", err)
	}
	return cert, nil
}

// ParseKey reads an ECDSA P-256 private key (PKCS#8 or SEC 1 PEM).
func ParseKey(keyPEM []byte) (*ecdsa.PrivateKey, error) {
	b, _ := pem.Decode(keyPEM)
	if b == nil || !strings.HasSuffix(b.Type, "PRIVATE KEY") {
		return nil, errors.New("no PEM PRIVATE KEY block")
	}
	var key any
	var err error
	if b.Type == "EC PRIVATE KEY" {
		key, err = x509.ParseECPrivateKey(b.Bytes)
	} else {
		key, err = x509.ParsePKCS8PrivateKey(b.Bytes)
	}
	if err != nil {
		return nil, fmt.Errorf("parse private key: %w", err)
	}
	ec, ok := key.(*ecdsa.PrivateKey)
	if !ok || ec.Curve != elliptic.P256() {
		return nil, errors.New("the private key must be ECDSA P-256")
	}
	return ec, nil
}

// EncodeCert is DER as PEM.
func EncodeCert(der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

// EncodeKey is a private key as PKCS#8 PEM.
func EncodeKey(key *ecdsa.PrivateKey) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("encode private key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

// GenerateKey makes a new P-256 key.
func GenerateKey() (*ecdsa.PrivateKey, error) {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate P-256 key: %w", err)
	}
	return k, nil
}

// Fingerprint is the SHA-256 of a certificate's DER, in hex.
func Fingerprint(cert *x509.Certificate) string {
	sum := sha256.Sum256(cert.Raw)
	return hex.EncodeToString(sum[:])
}

func serial() (*big.Int, error) {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, fmt.Errorf("certificate serial: %w", err)
	}
	return n, nil
}

// NewCA makes a self-signed P-256 CA valid from now for CALifetime.
func NewCA(now time.Time) (*CA, []byte, error) {
	key, err := GenerateKey()
	if err != nil {
		return nil, nil, err
	}
	sn, err := serial()
	if err != nil {
		return nil, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          sn,
		Subject:               pkix.Name{CommonName: "Wrenn internal CA", Organization: []string{"Wrenn"}},
		NotBefore:             now.Add(-backdate),
		NotAfter:              now.Add(CALifetime),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, nil, fmt.Errorf("create CA certificate: %w", err)
	}
	keyPEM, err := EncodeKey(key)
	if err != nil {
		return nil, nil, err
	}
	ca, certErr, keyErr := ParseCA(EncodeCert(der), keyPEM, now)
	if err := errors.Join(certErr, keyErr); err != nil {
		return nil, nil, fmt.Errorf("check the new CA: %w", err)
	}
	return ca, keyPEM, nil
}

// ErrCAExists: WriteCA never replaces a CA, whose loss would lock every
// host out.
var ErrCAExists = errors.New("a CA already exists there")

// WriteCA makes a new CA in dir: ca.crt (0644) and ca.key (0600). It
// refuses to overwrite either file.
func WriteCA(dir string, now time.Time) (certPath, keyPath string, err error) {
	certPath, keyPath = filepath.Join(dir, CACertFile), filepath.Join(dir, CAKeyFile)
	for _, p := range []string{certPath, keyPath} {
		if _, err := os.Lstat(p); err == nil {
			return "", "", fmt.Errorf("%s: %w", p, ErrCAExists)
		}
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", "", fmt.Errorf("create %s: %w", dir, err)
	}
	ca, keyPEM, err := NewCA(now)
	if err != nil {
		return "", "", err
	}
	// The key first: a certificate without its key is no CA.
	if err := atomicfile.WriteFile(keyPath, keyPEM, 0o600); err != nil {
		return "", "", fmt.Errorf("write CA key: %w", err)
	}
	if err := atomicfile.WriteFile(certPath, ca.CertPEM, 0o644); err != nil {
		return "", "", fmt.Errorf("write CA certificate: %w", err)
	}
	return certPath, keyPath, nil
}

// Identities.
const (
	uriScheme = "wrenn"
	// ControlPlaneURI names the control plane's client certificate.
	ControlPlaneURI = "wrenn://control-plane"
	// ControlPlaneCN is its common name.
	ControlPlaneCN = "wrenn-control-plane"
)

// HostURI names host id's leaf.
func HostURI(hostID string) string { return "wrenn://host/" + hostID }

// identity is the one Wrenn URI SAN of cert ("" when it has none or
// several, which Wrenn never issues).
func identity(cert *x509.Certificate) string {
	var found string
	for _, u := range cert.URIs {
		if u.Scheme != uriScheme {
			continue
		}
		if found != "" {
			return ""
		}
		found = u.String()
	}
	return found
}

func mustURL(s string) *url.URL {
	u, err := url.Parse(s)
	if err != nil {
		panic(err) // only constants and ids checked by the caller reach here
	}
	return u
}

// SameCert says whether two PEM certificates are the same certificate.
func SameCert(a, b []byte) bool {
	ca, err1 := ParseCert(a)
	cb, err2 := ParseCert(b)
	return err1 == nil && err2 == nil && bytes.Equal(ca.Raw, cb.Raw)
}
