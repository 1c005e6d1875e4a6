package hostauth

import (
	"context"
	"crypto/x509"
	"errors"
	"strings"
	"time"

	"github.com/wrenn-dev/wrenn/internal/controlplane/service"
	"github.com/wrenn-dev/wrenn/internal/db"
	"github.com/wrenn-dev/wrenn/internal/pki"
)

// CertGrant is the host leaf a registration or refresh issues when the
// control plane has a CA: the agent made the key and keeps it.
type CertGrant struct {
	CertPEM       string     `json:"cert_pem,omitempty"`
	CACertPEM     string     `json:"ca_cert_pem,omitempty"`
	CertExpiresAt *time.Time `json:"cert_expires_at,omitempty"`
}

// checkCSR reads a request's CSR before anything is consumed or rotated,
// so a bad one costs the agent nothing; nil without a CA (plain HTTP mode
// issues no certificates and ignores CSRs).
func (s *Service) checkCSR(raw string) (*x509.CertificateRequest, error) {
	if s.cfg.CA == nil {
		return nil, nil
	}
	if strings.TrimSpace(raw) == "" {
		return nil, service.Invalid("csr", "this control plane runs with mTLS: a certificate request (csr, PEM) is required")
	}
	csr, err := pki.ParseCSR(raw)
	if err != nil {
		return nil, service.Invalid("csr", "%s", err.Error())
	}
	return csr, nil
}

// grantCert issues the host's leaf for csr (nil: no CA, no grant) and
// records its fingerprint and expiry in q's transaction. renewal keeps the
// leaf it replaces accepted until the agent has swapped.
func (s *Service) grantCert(ctx context.Context, q *db.Queries, csr *x509.CertificateRequest, hostID, address string, renewal bool) (CertGrant, error) {
	if csr == nil {
		return CertGrant{}, nil
	}
	leaf, err := s.cfg.CA.IssueHost(csr, hostID, address, s.now(), s.cfg.CertTTL)
	var ce *pki.CSRError
	if errors.As(err, &ce) {
		return CertGrant{}, service.Invalid("csr", "%s", ce.Error())
	}
	if err != nil {
		return CertGrant{}, service.Internal("issue host certificate", err)
	}
	exp := leaf.Cert.NotAfter.UTC()
	if _, err := q.SetHostCert(ctx, db.SetHostCertParams{ID: hostID, Fingerprint: &leaf.Fingerprint, ExpiresAt: &exp,
		KeepPrevious: renewal}); err != nil {
		return CertGrant{}, service.Internal("record host certificate", err)
	}
	return CertGrant{CertPEM: string(leaf.CertPEM), CACertPEM: string(s.cfg.CA.CertPEM), CertExpiresAt: &exp}, nil
}
