package api

import (
	"net/http"

	"github.com/go-chi/chi/v5"

	"github.com/wrenn-dev/wrenn/internal/controlplane/dashboard"
	"github.com/wrenn-dev/wrenn/internal/controlplane/service"
)

// oauthStateCookie carries a flow's signed state and PKCE verifier from its
// start to its callback; only the callback path ever receives it.
const (
	oauthStateCookie     = "wrenn_oauth_state"
	oauthStateCookiePath = "/v1/auth/oauth/"
)

// oauthFlows is the OAuth service, or a provider_not_configured answer
// when no provider is configured at all.
func (s *Server) oauthFlows(w http.ResponseWriter, r *http.Request) (*service.OAuth, bool) {
	if s.deps.OAuth == nil {
		s.writeErr(w, r, service.NotFound(service.CodeProviderNotConfigured, "no sign-in provider is configured on this server"))
		return nil, false
	}
	return s.deps.OAuth, true
}

func (s *Server) setOAuthState(w http.ResponseWriter, value string, maxAge int) {
	http.SetCookie(w, &http.Cookie{
		Name: oauthStateCookie, Value: value, Path: oauthStateCookiePath, MaxAge: maxAge,
		HttpOnly: true, Secure: s.deps.SecureCookies, SameSite: http.SameSiteLaxMode,
	})
}

// redirect answers 302 with no body and nothing a browser may cache or
// pass on as a Referer.
func redirect(w http.ResponseWriter, to string) {
	w.Header().Set("Location", to)
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("Referrer-Policy", "no-referrer")
	w.WriteHeader(http.StatusFound)
}

// oauthProviders lists the providers a browser may sign in with, so the
// dashboard shows only the buttons that work; none configured is an empty
// list, not an error.
func (s *Server) oauthProviders(w http.ResponseWriter, _ *http.Request) {
	names := []string{}
	if s.deps.OAuth != nil {
		names = append(names, s.deps.OAuth.Providers()...)
	}
	WriteJSON(w, http.StatusOK, map[string][]string{"providers": names})
}

func (s *Server) oauthStart(w http.ResponseWriter, r *http.Request) {
	o, ok := s.oauthFlows(w, r)
	if !ok {
		return
	}
	st, err := o.Start(chi.URLParam(r, "provider"), r.URL.Query().Get("redirect"))
	if err != nil {
		s.writeErr(w, r, err)
		return
	}
	s.setOAuthState(w, st.Cookie, o.StateTTL())
	redirect(w, st.AuthorizeURL)
}

func (s *Server) oauthCallback(w http.ResponseWriter, r *http.Request) {
	o, ok := s.oauthFlows(w, r)
	if !ok {
		return
	}
	in := service.CallbackInput{Provider: chi.URLParam(r, "provider"), State: r.URL.Query().Get("state"),
		Code: r.URL.Query().Get("code"), Failure: r.URL.Query().Get("error")}
	if c, err := r.Cookie(oauthStateCookie); err == nil {
		in.Cookie = c.Value
	}
	// One state serves one callback, whatever its outcome.
	s.setOAuthState(w, "", -1)
	to, err := o.Callback(r.Context(), in)
	if err != nil && dashboard.IsNavigation(r) {
		// A browser shows the error on the dashboard; programs get JSON.
		se := asServiceError("oauth callback", err)
		s.logFailure(r, se)
		redirect(w, o.FailureLanding(se.Code, se.Message))
		return
	}
	if err != nil {
		s.writeErr(w, r, err)
		return
	}
	redirect(w, to)
}

func (s *Server) oauthExchange(w http.ResponseWriter, r *http.Request) {
	o, ok := s.oauthFlows(w, r)
	if !ok {
		return
	}
	var in struct {
		Code string `json:"code"`
	}
	if err := decodeJSON(r, &in, false); err != nil {
		s.writeErr(w, r, err)
		return
	}
	if in.Code == "" {
		s.writeErr(w, r, service.Invalid("code", "code is required"))
		return
	}
	sess, err := o.Exchange(r.Context(), in.Code)
	if err != nil {
		s.writeErr(w, r, err)
		return
	}
	s.writeSession(w, r, http.StatusOK, sess)
}

func (s *Server) linkIdentity(w http.ResponseWriter, r *http.Request) {
	o, ok := s.oauthFlows(w, r)
	if !ok {
		return
	}
	var in struct {
		Redirect string `json:"redirect"`
	}
	if err := decodeJSON(r, &in, true); err != nil {
		s.writeErr(w, r, err)
		return
	}
	st, err := o.StartLink(caller(r), chi.URLParam(r, "provider"), in.Redirect)
	if err != nil {
		s.writeErr(w, r, err)
		return
	}
	s.setOAuthState(w, st.Cookie, o.StateTTL())
	w.Header().Set("Cache-Control", "no-store")
	WriteJSON(w, http.StatusOK, st)
}

func (s *Server) listIdentities(w http.ResponseWriter, r *http.Request) {
	ids, err := s.deps.Service.ListIdentities(r.Context(), caller(r))
	if err != nil {
		s.writeErr(w, r, err)
		return
	}
	WriteJSON(w, http.StatusOK, ids)
}

func (s *Server) unlinkIdentity(w http.ResponseWriter, r *http.Request) {
	if err := s.deps.Service.UnlinkIdentity(r.Context(), caller(r), chi.URLParam(r, "provider")); err != nil {
		s.writeErr(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}
