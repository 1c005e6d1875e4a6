package oauth

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"golang.org/x/oauth2"
)

// GitHubConfig configures the GitHub provider.
type GitHubConfig struct {
	ClientID, ClientSecret string
	// RedirectURL is the control plane's callback, as registered with the
	// OAuth app.
	RedirectURL string
	// BaseURL serves the authorize and token endpoints
	// (https://github.com, or a GitHub Enterprise server); APIURL the REST
	// API (https://api.github.com, or https://HOST/api/v3).
	BaseURL, APIURL string
	// HTTPClient makes every call to GitHub; nil uses one with a 15 s
	// timeout.
	HTTPClient *http.Client
}

// GitHubScopes are what Wrenn asks of GitHub: the profile, and the email
// addresses with their verification (the profile hides private emails).
var GitHubScopes = []string{"read:user", "user:email"}

// GitHub signs users in with a GitHub OAuth app.
type GitHub struct {
	conf   oauth2.Config
	apiURL string
	client *http.Client
}

// NewGitHub builds the provider.
func NewGitHub(c GitHubConfig) (*GitHub, error) {
	if c.ClientID == "" || c.ClientSecret == "" || c.RedirectURL == "" || c.BaseURL == "" || c.APIURL == "" {
		return nil, errors.New("github oauth: client id, secret, redirect, base and API URLs are required")
	}
	client := c.HTTPClient
	if client == nil {
		client = &http.Client{Timeout: 15 * time.Second}
	}
	base := strings.TrimRight(c.BaseURL, "/")
	return &GitHub{
		conf: oauth2.Config{
			ClientID: c.ClientID, ClientSecret: c.ClientSecret, RedirectURL: c.RedirectURL, Scopes: GitHubScopes,
			// GitHub takes the client credentials in the form; naming the
			// style saves the library's probe request per exchange.
			Endpoint: oauth2.Endpoint{AuthURL: base + "/login/oauth/authorize", TokenURL: base + "/login/oauth/access_token", AuthStyle: oauth2.AuthStyleInParams},
		},
		apiURL: strings.TrimRight(c.APIURL, "/"),
		client: client,
	}, nil
}

// Name implements Provider.
func (*GitHub) Name() string { return "github" }

// AuthCodeURL implements Provider.
func (g *GitHub) AuthCodeURL(state, verifier string) string {
	return g.conf.AuthCodeURL(state, oauth2.S256ChallengeOption(verifier))
}

// Profile implements Provider: the token exchange, GET /user, and GET
// /user/emails for the primary email and whether GitHub verified it.
func (g *GitHub) Profile(ctx context.Context, code, verifier string) (Profile, error) {
	tok, err := g.conf.Exchange(context.WithValue(ctx, oauth2.HTTPClient, g.client), code, oauth2.VerifierOption(verifier))
	if err != nil {
		return Profile{}, classifyExchange(err)
	}
	var u struct {
		ID    int64   `json:"id"`
		Login string  `json:"login"`
		Name  *string `json:"name"`
		Email *string `json:"email"`
	}
	if err := g.get(ctx, tok, "/user", &u); err != nil {
		return Profile{}, err
	}
	if u.ID == 0 {
		return Profile{}, fmt.Errorf("%w: GET /user has no id", ErrUnavailable)
	}
	// The emails list is read even when the profile shows one: only it
	// says whether GitHub verified the address.
	var emails []struct {
		Email    string `json:"email"`
		Primary  bool   `json:"primary"`
		Verified bool   `json:"verified"`
	}
	if err := g.get(ctx, tok, "/user/emails", &emails); err != nil {
		return Profile{}, err
	}
	p := Profile{ID: strconv.FormatInt(u.ID, 10), Login: u.Login}
	if u.Name != nil {
		p.Name = *u.Name
	}
	for _, e := range emails {
		if e.Primary {
			p.Email, p.EmailVerified = e.Email, e.Verified
		}
	}
	if p.Email == "" && u.Email != nil {
		p.Email = *u.Email // unverified as far as we know
	}
	return p, nil
}

// classifyExchange tells a refused code (GitHub answers 200 with an error
// field, or a 4xx) from GitHub being down.
func classifyExchange(err error) error {
	var re *oauth2.RetrieveError
	if errors.As(err, &re) && re.Response != nil && re.Response.StatusCode < 500 && re.ErrorCode != "" {
		return fmt.Errorf("%w: %s", ErrCodeRejected, re.ErrorCode)
	}
	return fmt.Errorf("%w: token exchange: %w", ErrUnavailable, err)
}

// get reads one GitHub API resource as JSON into v.
func (g *GitHub) get(ctx context.Context, tok *oauth2.Token, path string, v any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, g.apiURL+path, nil)
	if err != nil {
		return fmt.Errorf("%w: GET %s: %w", ErrUnavailable, path, err)
	}
	req.Header.Set("Accept", "application/vnd.github+json")
	req.Header.Set("X-GitHub-Api-Version", "2022-11-28")
	tok.SetAuthHeader(req)
	resp, err := g.client.Do(req)
	if err != nil {
		return fmt.Errorf("%w: GET %s: %w", ErrUnavailable, path, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return fmt.Errorf("%w: GET %s: read: %w", ErrUnavailable, path, err)
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%w: GET %s: status %d", ErrUnavailable, path, resp.StatusCode)
	}
	if err := json.Unmarshal(body, v); err != nil {
		return fmt.Errorf("%w: GET %s: %w", ErrUnavailable, path, err)
	}
	return nil
}
