package service

import (
	"context"
	"errors"
	"net/url"
	"strings"

	"github.com/wrenn-dev/wrenn/internal/controlplane/auth"
	"github.com/wrenn-dev/wrenn/internal/controlplane/auth/oauth"
	"github.com/wrenn-dev/wrenn/internal/db"
)

// OAuthConfig configures sign-in through providers.
type OAuthConfig struct {
	Providers *oauth.Registry
	States    *oauth.StateSigner
	Store     *oauth.Store
	// DashboardURL is where browsers land after a callback.
	DashboardURL string
}

// OAuth runs sign-in and linking through providers: the flow's state and
// one-time codes here, the account rules on Service.
type OAuth struct {
	svc *Service
	cfg OAuthConfig
}

// NewOAuth builds the flows; every field of cfg is required.
func NewOAuth(svc *Service, cfg OAuthConfig) (*OAuth, error) {
	if svc == nil || cfg.Providers == nil || cfg.States == nil || cfg.Store == nil || cfg.DashboardURL == "" {
		return nil, errors.New("oauth: service, providers, states, store and dashboard URL are required")
	}
	cfg.DashboardURL = strings.TrimRight(cfg.DashboardURL, "/")
	return &OAuth{svc: svc, cfg: cfg}, nil
}

// StateTTL is how long a flow's state cookie lives.
func (o *OAuth) StateTTL() int { return int(o.cfg.States.TTL().Seconds()) }

// Providers names the configured providers, sorted.
func (o *OAuth) Providers() []string { return o.cfg.Providers.Names() }

func (o *OAuth) provider(name string) (oauth.Provider, error) {
	p, ok := o.cfg.Providers.Get(name)
	if !ok {
		return nil, NotFound(CodeProviderNotConfigured, "sign-in with "+strings.ToValidUTF8(name, "")+" is not configured on this server")
	}
	return p, nil
}

// Started is where a flow sends the browser, and the state cookie to set.
type Started struct {
	AuthorizeURL string `json:"authorize_url"`
	Cookie       string `json:"-"`
}

// Start begins signing in with provider; redirect is an optional dashboard
// path to land on.
func (o *OAuth) Start(provider, redirect string) (Started, error) {
	return o.start(provider, "", redirect)
}

// StartLink begins linking provider to the caller.
func (o *OAuth) StartLink(a auth.AuthContext, provider, redirect string) (Started, error) {
	return o.start(provider, a.UserID, redirect)
}

func (o *OAuth) start(provider, linkUserID, redirect string) (Started, error) {
	p, err := o.provider(provider)
	if err != nil {
		return Started{}, err
	}
	if err := checkRedirect(redirect); err != nil {
		return Started{}, err
	}
	f, cookie, err := o.cfg.States.Start(provider, linkUserID, redirect)
	if err != nil {
		return Started{}, Internal("start oauth", err)
	}
	return Started{AuthorizeURL: p.AuthCodeURL(f.State, f.Verifier), Cookie: cookie}, nil
}

// checkRedirect accepts only a path on the dashboard: an absolute URL or a
// scheme-relative one ("//evil.example") would make the callback an open
// redirect.
func checkRedirect(r string) error {
	if r == "" {
		return nil
	}
	u, err := url.Parse(r)
	if err != nil || !strings.HasPrefix(r, "/") || strings.HasPrefix(r, "//") || strings.ContainsAny(r, "\\\x00\r\n\t#") ||
		u.Scheme != "" || u.Host != "" || len(r) > 1024 {
		return Invalid("redirect", "redirect must be a path on the dashboard, such as /sandboxes")
	}
	return nil
}

// CallbackInput is what the provider sent the browser back with, and the
// browser's state cookie.
type CallbackInput struct {
	Provider, Cookie     string
	State, Code, Failure string // Failure: the provider's error parameter
}

// Callback finishes a flow and returns where the browser goes: the
// dashboard with a one-time code (sign-in) or with the linked provider
// (link). The state is checked and spent before anything else, so one
// state serves one callback whatever happens after.
func (o *OAuth) Callback(ctx context.Context, in CallbackInput) (string, error) {
	p, err := o.provider(in.Provider)
	if err != nil {
		return "", err
	}
	f, err := o.cfg.States.Open(in.Cookie, in.State, in.Provider)
	var se *oauth.StateError
	if errors.As(err, &se) {
		return "", Unauthorized(CodeInvalidOAuthState, se.Reason)
	}
	if err != nil {
		return "", Internal("open oauth state", err)
	}
	fresh, err := o.cfg.Store.ClaimState(ctx, f.State, o.cfg.States.TTL())
	if err != nil {
		return "", Internal("oauth callback", err)
	}
	if !fresh {
		return "", Unauthorized(CodeInvalidOAuthState, "this sign-in state was already used; start signing in again")
	}
	if in.Failure != "" {
		return "", Unauthorized(CodeOAuthDenied, "the provider did not authorize the sign-in")
	}
	if in.Code == "" {
		return "", Invalid("code", "code is required")
	}
	prof, err := p.Profile(ctx, in.Code, f.Verifier)
	switch {
	case errors.Is(err, oauth.ErrCodeRejected):
		return "", &Error{Kind: CodeOAuthCodeRejected.Kind(), Code: CodeOAuthCodeRejected, Message: "the provider refused the authorization code; start signing in again", Err: err}
	case err != nil:
		return "", &Error{Kind: CodeProviderUnavailable.Kind(), Code: CodeProviderUnavailable, Message: in.Provider + " could not be reached; try again shortly", Err: err}
	}
	if f.LinkUserID != "" {
		if err := o.svc.linkIdentity(ctx, f.LinkUserID, in.Provider, prof); err != nil {
			return "", err
		}
		return o.dashboard(f.Redirect, "oauth_linked", in.Provider), nil
	}
	u, err := o.svc.signInWithIdentity(ctx, in.Provider, prof)
	if err != nil {
		return "", err
	}
	code, err := o.cfg.Store.NewCode(ctx, u.ID)
	if err != nil {
		return "", Internal("oauth callback", err)
	}
	return o.dashboard(f.Redirect, "oauth_code", code), nil
}

// dashboard is the landing URL: the one value goes in the fragment, which
// browsers send to no server, so it stays out of access logs and Referer.
func (o *OAuth) dashboard(path, key, value string) string {
	if path == "" {
		path = "/"
	}
	return o.cfg.DashboardURL + path + "#" + url.Values{key: {value}}.Encode()
}

// callbackPage is the dashboard page that shows a failed callback.
const callbackPage = "/auth/callback"

// FailureLanding is where a browser goes when its callback failed: the
// dashboard's callback page, with the error's code and message in the
// fragment, so a person reads it in words instead of the API's JSON.
func (o *OAuth) FailureLanding(code Code, message string) string {
	return o.cfg.DashboardURL + callbackPage + "#" + url.Values{"oauth_error": {string(code)}, "oauth_message": {message}}.Encode()
}

// Exchange spends a one-time code for the session of its user.
func (o *OAuth) Exchange(ctx context.Context, code string) (Session, error) {
	bad := Unauthorized(CodeInvalidOAuthCode, "the code is invalid, used or expired; sign in again")
	userID, err := o.cfg.Store.TakeCode(ctx, code)
	if errors.Is(err, oauth.ErrCodeInvalid) {
		return Session{}, bad
	}
	if err != nil {
		return Session{}, Internal("exchange oauth code", err)
	}
	u, err := o.svc.q.GetUserByID(ctx, userID)
	if isNoRows(err) {
		return Session{}, bad
	}
	if err != nil {
		return Session{}, Internal("exchange oauth code", err)
	}
	return o.svc.defaultTeamSession(ctx, u)
}

// signInWithIdentity is the user a provider profile signs in: the linked
// user, or a new one (with their default team) when neither the identity
// nor its email is known. An email that belongs to an unlinked account is
// refused: linking is done from that account, never by a sign-in. Two
// first sign-ins of one account at once: the loser finds the email taken
// and looks once more, finding the winner's user.
func (s *Service) signInWithIdentity(ctx context.Context, provider string, p oauth.Profile) (db.User, error) {
	for attempt := 0; ; attempt++ {
		u, err := s.q.GetUserByIdentity(ctx, db.GetUserByIdentityParams{Provider: provider, ProviderUserID: p.ID})
		if err == nil {
			team, err := defaultTeamID(ctx, s.q, u.ID)
			if err == nil {
				err = s.audit.UserLoggedIn(ctx, s.q, userActor(u), team, u.ID, provider)
			}
			if err != nil {
				return db.User{}, Internal("oauth sign-in", err)
			}
			return u, nil
		}
		if !isNoRows(err) {
			return db.User{}, Internal("oauth sign-in", err)
		}
		if !p.EmailVerified {
			return db.User{}, Unauthorized(CodeEmailUnverified, "the "+provider+" account's primary email is not verified; verify it there and sign in again")
		}
		email, err := normalizeEmail(p.Email)
		if err != nil {
			return db.User{}, Unauthorized(CodeEmailUnverified, "the "+provider+" account has no usable primary email")
		}
		// The email taken, found or by a unique violation, may be a
		// concurrent first sign-in of this same account that committed
		// after the identity lookup above (user and identity commit
		// together): look again once before refusing.
		taken := false
		if _, err := s.q.GetUserByEmail(ctx, email); err == nil {
			taken = true
		} else if !isNoRows(err) {
			return db.User{}, Internal("oauth sign-in", err)
		}
		if !taken {
			u, _, err = s.createAccount(ctx, newAccount{email: email, name: profileName(p), identity: &db.CreateIdentityParams{
				Provider: provider, ProviderUserID: p.ID, Login: p.Login, Email: email}})
			taken = isUniqueViolation(err)
		}
		if taken && attempt == 0 {
			continue
		}
		if taken {
			return db.User{}, emailTakenByUnlinked(provider)
		}
		if err != nil {
			return db.User{}, Internal("oauth sign-up", err)
		}
		return u, nil
	}
}

func emailTakenByUnlinked(provider string) *Error {
	return Conflict(CodeEmailTaken, "an account with this email exists and is not linked to "+provider+"; log in to it and link "+provider+" from your account")
}

// profileName is the provider's display name, else the login, else none:
// whichever the account rules accept.
func profileName(p oauth.Profile) string {
	for _, n := range []string{p.Name, p.Login} {
		if name, err := checkName("name", n, false, 100); err == nil {
			return name
		}
	}
	return ""
}
