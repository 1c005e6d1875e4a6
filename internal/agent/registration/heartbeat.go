package registration

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"slices"
	"time"

	"github.com/wrenn-dev/wrenn/internal/pki"
)

// Options configure Run.
type Options struct {
	// Dir is WRENN_DIR; credentials live in Dir/host-credentials.json.
	Dir string
	// CPURLs are the control plane's URLs (replicas, or one load
	// balancer), tried in order; needed to register, and override the saved
	// ones when set.
	CPURLs []string
	// RegisterToken, when set, registers first (replacing saved credentials).
	RegisterToken string
	// Address is the host:port the control plane dials; needed to register.
	Address string
	// Specs describe this machine at registration.
	Specs Specs
	// Report gives the resources sent with each heartbeat; may be nil.
	Report func(ctx context.Context) Resources
	// Interval between heartbeats (30 s).
	Interval time.Duration
	// UnreachableAfter: how long no control plane may answer a heartbeat
	// or call this agent before every sandbox is paused (5 min).
	UnreachableAfter time.Duration
	// Contact, when set, is touched by the agent's RPC server on each call
	// from a control plane; such a call counts as the control plane
	// answering.
	Contact *Contact
	// PauseAll pauses every running sandbox; may be nil.
	PauseAll func(ctx context.Context) error
	// HTTPClient talks to the control plane; nil uses a 30 s timeout client.
	HTTPClient *http.Client
	Logger     *slog.Logger
	// OnRegistered, if set, is called with the credentials in use once
	// the loop starts (after registering or loading them).
	OnRegistered func(Credentials)
	// Backoff spaces out retries of registration and token refresh after a
	// 5xx answer or a network error.
	Backoff Backoff
	// Certs, when set, is given the host's certificate at start and after
	// every renewal (mTLS mode); the agent's listener serves from it.
	Certs *pki.HostCertStore
	// Now is the clock certificates are judged by (nil: time.Now).
	Now func() time.Time
}

// Run registers when a token is given (else loads saved credentials), then
// sends heartbeats until ctx ends (nil), the host is deleted
// (ErrHostDeleted) or the credentials are refused (ErrCredentialsRejected,
// after PauseAll).
func Run(ctx context.Context, o Options) error {
	hb, err := Prepare(ctx, o)
	if err != nil || hb == nil {
		return err
	}
	return hb.Run(ctx)
}

// Prepare registers or loads the credentials (nil, nil when ctx ended
// first), renews a host certificate that is due (one that expired must be
// renewed, or the agent cannot start), checks it and installs it in
// o.Certs, and returns the heartbeat loop to run.
func Prepare(ctx context.Context, o Options) (*Heartbeater, error) {
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	creds, err := credentials(ctx, o)
	if err != nil || ctx.Err() != nil {
		return nil, err
	}
	if o.OnRegistered != nil {
		o.OnRegistered(creds)
	}
	hb := &Heartbeater{Dir: o.Dir, Creds: creds, Interval: o.Interval, UnreachableAfter: o.UnreachableAfter,
		Contact: o.Contact, PauseAll: o.PauseAll, Report: o.Report, HTTPClient: o.HTTPClient, Logger: o.Logger, Backoff: o.Backoff,
		Certs: o.Certs, Now: o.Now}
	hb.defaults()
	if !creds.MTLS() {
		return hb, nil
	}
	if leaf, err := pki.ParseCert([]byte(creds.CertPEM)); err == nil && !hb.Now().Before(leaf.NotAfter) {
		if err := hb.refresh(ctx); err != nil {
			return nil, fmt.Errorf("%s: cert_pem expired at %s and could not be renewed: %w", CredentialsFile, leaf.NotAfter.UTC().Format(time.RFC3339), err)
		}
	} else if err := hb.renewIfDue(ctx); err != nil {
		o.Logger.Warn("renew the host certificate", "err", err)
	}
	if err := hb.install(); err != nil {
		return nil, err
	}
	return hb, nil
}

// credentials registers when a token is given, else loads the saved ones.
func credentials(ctx context.Context, o Options) (Credentials, error) {
	var creds Credentials
	registered := false
	if o.RegisterToken != "" {
		// A control plane that is down or failing (5xx) is waited for; only
		// its refusal (4xx) ends the agent.
		var c Credentials
		err := retry(ctx, o.Backoff, o.Logger, "registration", func(ctx context.Context) error {
			var err error
			c, err = register(ctx, o.HTTPClient, o.CPURLs, o.RegisterToken, o.Address, o.Specs)
			return err
		})
		if ctx.Err() != nil {
			return Credentials{}, nil
		}
		var ae *APIError
		switch {
		case err == nil:
			if err := Save(o.Dir, c); err != nil {
				return Credentials{}, err
			}
			o.Logger.Info("registered with the control plane", "host_id", c.HostID, "cp_urls", c.URLs())
			creds, registered = c, true
		case errors.As(err, &ae) && ae.Status == http.StatusUnauthorized:
			// A restart that still passes the (now used) token keeps the
			// credentials it already has.
			if _, lerr := Load(o.Dir); lerr != nil {
				return Credentials{}, err
			}
			o.Logger.Warn("registration token refused; using the saved credentials", "err", err)
		default:
			o.Logger.Error("the control plane refused this agent's registration; not retrying", "err", err)
			return Credentials{}, err
		}
	}
	if !registered {
		c, err := Load(o.Dir)
		if err != nil {
			return Credentials{}, err
		}
		if len(o.CPURLs) > 0 && !slices.Equal(o.CPURLs, c.URLs()) {
			for _, u := range o.CPURLs {
				if err := checkCPURL(u); err != nil {
					return Credentials{}, err
				}
			}
			c = c.withURLs(o.CPURLs)
		}
		creds = c
	}
	return creds, nil
}

// Heartbeater is the heartbeat loop.
type Heartbeater struct {
	Dir              string
	Creds            Credentials
	Interval         time.Duration
	UnreachableAfter time.Duration
	// Contact, when set, holds the last call of a control plane to this
	// agent (see Options.Contact).
	Contact  *Contact
	PauseAll func(ctx context.Context) error
	// Report gives the resources each heartbeat carries; nil sends none.
	Report     func(ctx context.Context) Resources
	HTTPClient *http.Client
	Logger     *slog.Logger
	Backoff    Backoff
	// Certs receives each renewed host certificate (may be nil).
	Certs *pki.HostCertStore
	// Now judges certificates' lifetimes (nil: time.Now).
	Now func() time.Time

	cps *controlPlanes
}

func (h *Heartbeater) defaults() {
	if h.Interval <= 0 {
		h.Interval = 30 * time.Second
	}
	if h.UnreachableAfter <= 0 {
		h.UnreachableAfter = 5 * time.Minute
	}
	if h.Logger == nil {
		h.Logger = slog.New(slog.DiscardHandler)
	}
	if h.Contact == nil {
		h.Contact = &Contact{}
	}
	if h.Now == nil {
		h.Now = time.Now
	}
	if h.cps == nil {
		h.cps = newControlPlanes(h.HTTPClient, h.Creds.URLs())
	}
}

// Run beats until ctx ends or the control plane ends the relationship.
func (h *Heartbeater) Run(ctx context.Context) error {
	h.defaults()
	lastOK := time.Now()
	paused := false
	t := time.NewTicker(h.Interval)
	defer t.Stop()
	for {
		err := h.beatOnce(ctx)
		switch {
		case err == nil:
			if paused {
				h.Logger.Info("control plane reachable again")
			}
			lastOK, paused = time.Now(), false
		case ctx.Err() != nil:
			return nil
		case errors.Is(err, ErrHostDeleted):
			h.Logger.Warn("the control plane deleted this host; stopping heartbeats")
			if rerr := os.Remove(CredentialsPath(h.Dir)); rerr != nil && !errors.Is(rerr, os.ErrNotExist) {
				h.Logger.Warn("remove host credentials", "err", rerr)
			}
			return ErrHostDeleted
		case errors.Is(err, ErrCredentialsRejected):
			h.Logger.Error("host credentials rejected; pausing all sandboxes", "err", err)
			h.pauseAll(ctx)
			return ErrCredentialsRejected
		default:
			// A control plane that calls this agent is alive too.
			heard := lastOK
			if c := h.Contact.Last(); c.After(heard) {
				heard = c
			}
			silent := time.Since(heard)
			h.Logger.Warn("heartbeat failed", "err", err, "no_control_plane_for", silent.Round(time.Second))
			switch {
			case silent < h.UnreachableAfter:
				paused = false
			case !paused:
				h.Logger.Error("no control plane answered too long; pausing all sandboxes", "no_control_plane_for", silent.Round(time.Second))
				h.pauseAll(ctx)
				paused = true
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

func (h *Heartbeater) pauseAll(ctx context.Context) {
	if h.PauseAll == nil {
		return
	}
	// Pausing must finish even while the agent shuts down.
	pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Minute)
	defer cancel()
	if err := h.PauseAll(pctx); err != nil {
		h.Logger.Error("pause all sandboxes", "err", err)
	}
}

// beatOnce sends one heartbeat, refreshing the JWT first when it is about
// to expire and again when the control plane refuses it (401/403).
func (h *Heartbeater) beatOnce(ctx context.Context) error {
	if !h.Creds.TokenExpiresAt.IsZero() && time.Until(h.Creds.TokenExpiresAt) < 2*h.Interval {
		if err := h.refresh(ctx); err != nil {
			return err
		}
	} else if err := h.renewIfDue(ctx); err != nil {
		return err
	}
	err := h.post(ctx)
	var ae *APIError
	if errors.As(err, &ae) && (ae.Status == http.StatusUnauthorized || ae.Status == http.StatusForbidden) {
		if err := h.refresh(ctx); err != nil {
			return err
		}
		err = h.post(ctx)
	}
	if errors.As(err, &ae) && ae.Status == http.StatusNotFound {
		return ErrHostDeleted
	}
	return err
}

func (h *Heartbeater) post(ctx context.Context) error {
	cctx, cancel := context.WithTimeout(ctx, h.Interval)
	defer cancel()
	var body any
	if h.Report != nil {
		body = h.Report(cctx)
	}
	return h.cps.post(cctx, "/v1/hosts/"+h.Creds.HostID+"/heartbeat", h.Creds.Token, body, nil)
}

// refresh rotates credentials and saves them before using them, so a crash
// right after never leaves the file holding a revoked refresh token. A 5xx
// or network failure is retried with backoff for up to one interval (then
// the heartbeat loop carries on counting the control plane unreachable);
// a refusal (4xx) means the credentials are no good.
func (h *Heartbeater) refresh(ctx context.Context) error {
	cctx, cancel := context.WithTimeout(ctx, h.Interval)
	defer cancel()
	var c Credentials
	err := retry(cctx, h.Backoff, h.Logger, "host token refresh", func(ctx context.Context) error {
		var err error
		c, err = refresh(ctx, h.cps, h.Creds, h.Logger)
		return err
	})
	var ae *APIError
	if errors.As(err, &ae) && !Transient(err) {
		return fmt.Errorf("%w: %v", ErrCredentialsRejected, err)
	}
	if err != nil {
		return err
	}
	if err := Save(h.Dir, c); err != nil {
		return fmt.Errorf("keep refreshed credentials: %w", err)
	}
	h.Creds = c
	h.Logger.Info("host token refreshed", "expires_at", c.TokenExpiresAt)
	if h.Certs != nil && h.Certs.Loaded() {
		if err := h.install(); err != nil {
			h.Logger.Error("the renewed host certificate is unusable; keeping the current one", "err", err)
		}
	}
	return nil
}

// renewIfDue refreshes (renewing the host certificate) once a third of
// the certificate's lifetime is left, whatever the JWT's.
func (h *Heartbeater) renewIfDue(ctx context.Context) error {
	if !h.Creds.MTLS() {
		return nil
	}
	leaf, err := pki.ParseCert([]byte(h.Creds.CertPEM))
	if err != nil {
		return fmt.Errorf("%s: cert_pem: %w", CredentialsFile, err)
	}
	if leaf.NotAfter.Sub(h.Now()) >= leaf.NotAfter.Sub(leaf.NotBefore)/3 {
		return nil
	}
	h.Logger.Info("renewing the host certificate", "expires_at", leaf.NotAfter)
	return h.refresh(ctx)
}

// install checks the credentials' certificate material and swaps it into
// Certs.
func (h *Heartbeater) install() error {
	c := h.Creds
	if !c.MTLS() || h.Certs == nil {
		return nil
	}
	if err := h.Certs.Set([]byte(c.CertPEM), []byte(c.KeyPEM), []byte(c.CACertPEM), h.Now()); err != nil {
		return fmt.Errorf("%s: %w", CredentialsFile, err)
	}
	return nil
}
