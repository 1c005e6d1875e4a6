package api

import (
	"net/http"
	"strconv"

	"github.com/go-chi/chi/v5"

	"github.com/wrenn-dev/wrenn/internal/controlplane/channels"
	"github.com/wrenn-dev/wrenn/internal/controlplane/service"
)

// channelRoutes: sessions only; members read, owners and admins manage
// (the service checks roles).
func (s *Server) channelRoutes(r chi.Router) {
	r.Use(LimitBody(s.deps.MaxBodyBytes), s.authenticate(jwtOnly), s.channelsReady)
	r.Get("/", s.listChannels)
	r.Post("/", s.createChannel)
	r.Post("/test", s.testChannelConfig)
	r.Get("/{channel_id}", s.getChannel)
	r.Patch("/{channel_id}", s.updateChannel)
	r.Delete("/{channel_id}", s.deleteChannel)
	r.Put("/{channel_id}/config", s.replaceChannelConfig)
	r.Post("/{channel_id}/test", s.testChannel)
	r.Get("/{channel_id}/deliveries", s.listDeliveries)
}

func (s *Server) channelsReady(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if s.deps.Channels == nil {
			WriteError(w, service.CodeChannelsDisabled, "notification channels are disabled: the control plane has no WRENN_ENCRYPTION_KEY to seal their secrets with (64 hex digits, e.g. from `openssl rand -hex 32`)")
			return
		}
		next.ServeHTTP(w, r)
	})
}

// noStore marks answers that may hold a secret shown once.
func noStore(w http.ResponseWriter) { w.Header().Set("Cache-Control", "no-store") }

func (s *Server) listChannels(w http.ResponseWriter, r *http.Request) {
	cs, err := s.deps.Channels.List(r.Context(), caller(r))
	if err != nil {
		s.writeErr(w, r, err)
		return
	}
	WriteJSON(w, http.StatusOK, map[string]any{"channels": cs})
}

func (s *Server) createChannel(w http.ResponseWriter, r *http.Request) {
	var in channels.CreateInput
	if err := decodeJSON(r, &in, false); err != nil {
		s.writeErr(w, r, err)
		return
	}
	c, err := s.deps.Channels.Create(r.Context(), caller(r), in)
	if err != nil {
		s.writeErr(w, r, err)
		return
	}
	noStore(w)
	WriteJSON(w, http.StatusCreated, c)
}

func (s *Server) getChannel(w http.ResponseWriter, r *http.Request) {
	c, err := s.deps.Channels.Get(r.Context(), caller(r), chi.URLParam(r, "channel_id"))
	if err != nil {
		s.writeErr(w, r, err)
		return
	}
	WriteJSON(w, http.StatusOK, c)
}

func (s *Server) updateChannel(w http.ResponseWriter, r *http.Request) {
	var in channels.UpdateInput
	if err := decodeJSON(r, &in, false); err != nil {
		s.writeErr(w, r, err)
		return
	}
	c, err := s.deps.Channels.Update(r.Context(), caller(r), chi.URLParam(r, "channel_id"), in)
	if err != nil {
		s.writeErr(w, r, err)
		return
	}
	WriteJSON(w, http.StatusOK, c)
}

func (s *Server) deleteChannel(w http.ResponseWriter, r *http.Request) {
	if err := s.deps.Channels.Delete(r.Context(), caller(r), chi.URLParam(r, "channel_id")); err != nil {
		s.writeErr(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) replaceChannelConfig(w http.ResponseWriter, r *http.Request) {
	var in channels.ConfigInput
	if err := decodeJSON(r, &in, false); err != nil {
		s.writeErr(w, r, err)
		return
	}
	c, err := s.deps.Channels.ReplaceConfig(r.Context(), caller(r), chi.URLParam(r, "channel_id"), in)
	if err != nil {
		s.writeErr(w, r, err)
		return
	}
	noStore(w)
	WriteJSON(w, http.StatusOK, c)
}

func (s *Server) testChannelConfig(w http.ResponseWriter, r *http.Request) {
	var in channels.TestInput
	if err := decodeJSON(r, &in, false); err != nil {
		s.writeErr(w, r, err)
		return
	}
	res, err := s.deps.Channels.TestConfig(r.Context(), caller(r), in)
	if err != nil {
		s.writeErr(w, r, err)
		return
	}
	WriteJSON(w, http.StatusOK, res)
}

func (s *Server) testChannel(w http.ResponseWriter, r *http.Request) {
	res, err := s.deps.Channels.TestChannel(r.Context(), caller(r), chi.URLParam(r, "channel_id"))
	if err != nil {
		s.writeErr(w, r, err)
		return
	}
	WriteJSON(w, http.StatusOK, res)
}

func (s *Server) listDeliveries(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	limit := 0
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			s.writeErr(w, r, service.Invalid("limit", "limit must be a whole number from 1 to 200"))
			return
		}
		limit = n
	}
	page, err := s.deps.Channels.Deliveries(r.Context(), caller(r), chi.URLParam(r, "channel_id"), limit, q.Get("cursor"))
	if err != nil {
		s.writeErr(w, r, err)
		return
	}
	WriteJSON(w, http.StatusOK, page)
}
