package api

import (
	"net/http"

	"github.com/go-chi/chi/v5"

	"github.com/wrenn-dev/wrenn/internal/controlplane/service"
)

func (s *Server) signup(w http.ResponseWriter, r *http.Request) {
	var in service.SignupInput
	if err := decodeJSON(r, &in, false); err != nil {
		s.writeErr(w, r, err)
		return
	}
	sess, err := s.deps.Service.Signup(r.Context(), in)
	if err != nil {
		s.writeErr(w, r, err)
		return
	}
	s.writeSession(w, r, http.StatusCreated, sess)
}

func (s *Server) login(w http.ResponseWriter, r *http.Request) {
	var in service.LoginInput
	if err := decodeJSON(r, &in, false); err != nil {
		s.writeErr(w, r, err)
		return
	}
	sess, err := s.deps.Service.Login(r.Context(), in)
	if err != nil {
		s.writeErr(w, r, err)
		return
	}
	s.writeSession(w, r, http.StatusOK, sess)
}

func (s *Server) switchTeam(w http.ResponseWriter, r *http.Request) {
	var in struct {
		TeamID string `json:"team_id"`
	}
	if err := decodeJSON(r, &in, false); err != nil {
		s.writeErr(w, r, err)
		return
	}
	sess, err := s.deps.Service.SwitchTeam(r.Context(), caller(r), in.TeamID)
	if err != nil {
		s.writeErr(w, r, err)
		return
	}
	s.writeSession(w, r, http.StatusOK, sess)
}

func (s *Server) getMe(w http.ResponseWriter, r *http.Request) {
	me, err := s.deps.Service.GetMe(r.Context(), caller(r))
	if err != nil {
		s.writeErr(w, r, err)
		return
	}
	WriteJSON(w, http.StatusOK, me)
}

func (s *Server) patchMe(w http.ResponseWriter, r *http.Request) {
	var in service.UpdateMeInput
	if err := decodeJSON(r, &in, false); err != nil {
		s.writeErr(w, r, err)
		return
	}
	u, err := s.deps.Service.UpdateMe(r.Context(), caller(r), in)
	if err != nil {
		s.writeErr(w, r, err)
		return
	}
	WriteJSON(w, http.StatusOK, u)
}

func (s *Server) changePassword(w http.ResponseWriter, r *http.Request) {
	var in service.ChangePasswordInput
	if err := decodeJSON(r, &in, false); err != nil {
		s.writeErr(w, r, err)
		return
	}
	if err := s.deps.Service.ChangePassword(r.Context(), caller(r), in); err != nil {
		s.writeErr(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) listTeams(w http.ResponseWriter, r *http.Request) {
	ts, err := s.deps.Service.ListTeams(r.Context(), caller(r))
	if err != nil {
		s.writeErr(w, r, err)
		return
	}
	WriteJSON(w, http.StatusOK, map[string]any{"teams": ts})
}

func (s *Server) createTeam(w http.ResponseWriter, r *http.Request) {
	var in service.TeamInput
	if err := decodeJSON(r, &in, false); err != nil {
		s.writeErr(w, r, err)
		return
	}
	t, err := s.deps.Service.CreateTeam(r.Context(), caller(r), in)
	if err != nil {
		s.writeErr(w, r, err)
		return
	}
	WriteJSON(w, http.StatusCreated, t)
}

func (s *Server) getTeam(w http.ResponseWriter, r *http.Request) {
	t, err := s.deps.Service.GetTeam(r.Context(), caller(r), chi.URLParam(r, "team_id"))
	if err != nil {
		s.writeErr(w, r, err)
		return
	}
	WriteJSON(w, http.StatusOK, t)
}

func (s *Server) renameTeam(w http.ResponseWriter, r *http.Request) {
	var in service.TeamInput
	if err := decodeJSON(r, &in, false); err != nil {
		s.writeErr(w, r, err)
		return
	}
	t, err := s.deps.Service.RenameTeam(r.Context(), caller(r), chi.URLParam(r, "team_id"), in)
	if err != nil {
		s.writeErr(w, r, err)
		return
	}
	WriteJSON(w, http.StatusOK, t)
}

func (s *Server) deleteTeam(w http.ResponseWriter, r *http.Request) {
	if err := s.deps.Service.DeleteTeam(r.Context(), caller(r), chi.URLParam(r, "team_id")); err != nil {
		s.writeErr(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) listMembers(w http.ResponseWriter, r *http.Request) {
	ms, err := s.deps.Service.ListMembers(r.Context(), caller(r), chi.URLParam(r, "team_id"))
	if err != nil {
		s.writeErr(w, r, err)
		return
	}
	WriteJSON(w, http.StatusOK, map[string]any{"members": ms})
}

func (s *Server) addMember(w http.ResponseWriter, r *http.Request) {
	var in service.AddMemberInput
	if err := decodeJSON(r, &in, false); err != nil {
		s.writeErr(w, r, err)
		return
	}
	m, err := s.deps.Service.AddMember(r.Context(), caller(r), chi.URLParam(r, "team_id"), in)
	if err != nil {
		s.writeErr(w, r, err)
		return
	}
	WriteJSON(w, http.StatusCreated, m)
}

func (s *Server) updateMember(w http.ResponseWriter, r *http.Request) {
	var in service.UpdateMemberInput
	if err := decodeJSON(r, &in, false); err != nil {
		s.writeErr(w, r, err)
		return
	}
	if err := s.deps.Service.UpdateMemberRole(r.Context(), caller(r), chi.URLParam(r, "team_id"), chi.URLParam(r, "user_id"), in); err != nil {
		s.writeErr(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) removeMember(w http.ResponseWriter, r *http.Request) {
	out, err := s.deps.Service.RemoveMember(r.Context(), caller(r), chi.URLParam(r, "team_id"), chi.URLParam(r, "user_id"))
	if err != nil {
		s.writeErr(w, r, err)
		return
	}
	WriteJSON(w, http.StatusOK, out)
}

func (s *Server) createAPIKey(w http.ResponseWriter, r *http.Request) {
	var in service.APIKeyInput
	if err := decodeJSON(r, &in, false); err != nil {
		s.writeErr(w, r, err)
		return
	}
	k, err := s.deps.Service.CreateAPIKey(r.Context(), caller(r), in)
	if err != nil {
		s.writeErr(w, r, err)
		return
	}
	w.Header().Set("Cache-Control", "no-store")
	WriteJSON(w, http.StatusCreated, k)
}

func (s *Server) listAPIKeys(w http.ResponseWriter, r *http.Request) {
	ks, err := s.deps.Service.ListAPIKeys(r.Context(), caller(r))
	if err != nil {
		s.writeErr(w, r, err)
		return
	}
	WriteJSON(w, http.StatusOK, map[string]any{"api_keys": ks})
}

func (s *Server) deleteAPIKey(w http.ResponseWriter, r *http.Request) {
	if err := s.deps.Service.DeleteAPIKey(r.Context(), caller(r), chi.URLParam(r, "key_id")); err != nil {
		s.writeErr(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}
