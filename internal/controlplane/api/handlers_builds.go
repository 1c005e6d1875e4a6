package api

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"strconv"
	"strings"

	"github.com/go-chi/chi/v5"

	"github.com/wrenn-dev/wrenn/internal/controlplane/builds"
	"github.com/wrenn-dev/wrenn/internal/controlplane/service"
)

// buildRoutes serves template builds (platform admins, session JWTs)
// and the templates list (any member, JWT or API key). Without Deps.Builds
// the build routes answer 503.
func (s *Server) buildRoutes(r chi.Router) {
	r.Use(s.buildsReady, s.authenticate(jwtOnly))
	// Bodies are bounded by the handler: a multipart upload may be larger
	// than JSON bodies.
	r.Post("/", s.submitBuild)
	r.Get("/", s.listBuilds)
	r.Get("/{build_id}", s.getBuild)
	r.With(LimitBody(s.deps.MaxBodyBytes)).Post("/{build_id}/cancel", s.cancelBuild)
	r.Get("/{build_id}/logs", s.buildLogs)
}

func (s *Server) adminTemplateRoutes(r chi.Router) {
	r.Use(LimitBody(s.deps.MaxBodyBytes), s.authenticate(jwtOnly))
	r.Delete("/{name}", s.deleteTemplate)
}

func (s *Server) templateRoutes(r chi.Router) {
	r.Use(LimitBody(s.deps.MaxBodyBytes), s.authenticate(jwtOrKey))
	r.Get("/", s.listTemplates)
}

func (s *Server) buildsReady(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if s.deps.Builds == nil {
			WriteError(w, service.CodeServiceUnavailable, "template builds are not configured (they need Redis)")
			return
		}
		next.ServeHTTP(w, r)
	})
}

func buildID(r *http.Request) string { return chi.URLParam(r, "build_id") }

// submitBuild takes JSON, or multipart/form-data with a "config" part (the
// same JSON) and an optional "archive" part (tar, tar.gz or zip).
func (s *Server) submitBuild(w http.ResponseWriter, r *http.Request) {
	maxArchive := s.deps.Builds.MaxArchiveBytes()
	mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
	var (
		in      builds.SubmitInput
		archive []byte
		err     error
	)
	if mt == "multipart/form-data" {
		r.Body = http.MaxBytesReader(w, r.Body, maxArchive+s.deps.MaxBodyBytes+64<<10)
		in, archive, err = s.readBuildMultipart(r, maxArchive)
	} else {
		r.Body = http.MaxBytesReader(w, r.Body, s.deps.MaxBodyBytes)
		err = decodeJSON(r, &in, false)
	}
	if err != nil {
		s.writeErr(w, r, err)
		return
	}
	b, err := s.deps.Builds.Submit(r.Context(), caller(r), in, archive)
	if err != nil {
		s.writeErr(w, r, err)
		return
	}
	WriteJSON(w, http.StatusAccepted, b)
}

func (s *Server) readBuildMultipart(r *http.Request, maxArchive int64) (builds.SubmitInput, []byte, error) {
	var (
		in        builds.SubmitInput
		archive   []byte
		hasConfig bool
	)
	mr, err := r.MultipartReader()
	if err != nil {
		return in, nil, service.Invalid("", "bad multipart body: %v", err)
	}
	for {
		p, err := mr.NextPart()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return in, nil, multipartErr(err)
		}
		switch p.FormName() {
		case "config":
			if hasConfig {
				return in, nil, service.Invalid("config", "one config part only")
			}
			hasConfig = true
			body, err := io.ReadAll(io.LimitReader(p, s.deps.MaxBodyBytes+1))
			if err != nil {
				return in, nil, multipartErr(err)
			}
			if int64(len(body)) > s.deps.MaxBodyBytes {
				return in, nil, &service.Error{Kind: service.CodeTooLarge.Kind(), Code: service.CodeTooLarge, Field: "config",
					Message: fmt.Sprintf("the config part is larger than %d bytes", s.deps.MaxBodyBytes)}
			}
			req, _ := http.NewRequestWithContext(r.Context(), http.MethodPost, "/", bytes.NewReader(body))
			if err := decodeJSON(req, &in, false); err != nil {
				return in, nil, err
			}
		case "archive":
			if archive != nil {
				return in, nil, service.Invalid("archive", "one archive part only")
			}
			archive, err = io.ReadAll(io.LimitReader(p, maxArchive+1))
			if err != nil {
				return in, nil, multipartErr(err)
			}
			if int64(len(archive)) > maxArchive {
				return in, nil, &service.Error{Kind: service.CodeTooLarge.Kind(), Code: service.CodeTooLarge, Field: "archive",
					Message: fmt.Sprintf("the archive is larger than %d bytes", maxArchive)}
			}
			if len(archive) == 0 {
				return in, nil, service.Invalid("archive", "the archive part is empty")
			}
		default:
			return in, nil, service.Invalid(p.FormName(), "unknown part %q (use config and archive)", p.FormName())
		}
	}
	if !hasConfig {
		return in, nil, service.Invalid("config", "the multipart body needs a config part")
	}
	return in, archive, nil
}

func (s *Server) listBuilds(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	in := builds.ListInput{Name: q.Get("name"), Cursor: q.Get("cursor")}
	for _, v := range q["status"] {
		for _, st := range strings.Split(v, ",") {
			if st = strings.TrimSpace(st); st != "" {
				in.Statuses = append(in.Statuses, builds.Status(st))
			}
		}
	}
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n == 0 {
			s.writeErr(w, r, service.Invalid("limit", "limit must be between 1 and %d", service.MaxPageSize))
			return
		}
		in.Limit = n
	}
	page, err := s.deps.Builds.List(r.Context(), caller(r), in)
	if err != nil {
		s.writeErr(w, r, err)
		return
	}
	WriteJSON(w, http.StatusOK, page)
}

func (s *Server) getBuild(w http.ResponseWriter, r *http.Request) {
	b, err := s.deps.Builds.Get(r.Context(), caller(r), buildID(r))
	if err != nil {
		s.writeErr(w, r, err)
		return
	}
	WriteJSON(w, http.StatusOK, b)
}

func (s *Server) cancelBuild(w http.ResponseWriter, r *http.Request) {
	var in struct{}
	if err := decodeJSON(r, &in, true); err != nil {
		s.writeErr(w, r, err)
		return
	}
	b, err := s.deps.Builds.Cancel(r.Context(), caller(r), buildID(r))
	if err != nil {
		s.writeErr(w, r, err)
		return
	}
	WriteJSON(w, http.StatusAccepted, b)
}

// buildLogs streams a build as server-sent events: "build" (the build as
// recorded, with the step tails so far), then "step", "output" and a last
// "end". Errors before the first event are ordinary JSON answers.
func (s *Server) buildLogs(w http.ResponseWriter, r *http.Request) {
	// The controller reaches the server's writer through middleware
	// wrappers (Unwrap), which a type assertion would not.
	rc := http.NewResponseController(w)
	started := false
	event := func(name string, v any) error {
		if !started {
			w.Header().Set("Content-Type", "text/event-stream")
			w.Header().Set("Cache-Control", "no-cache")
			w.Header().Set("X-Accel-Buffering", "no")
			w.WriteHeader(http.StatusOK)
			started = true
		}
		b, _ := json.Marshal(v)
		if _, err := fmt.Fprintf(w, "event: %s\ndata: %s\n\n", name, b); err != nil {
			return err
		}
		if err := rc.Flush(); err != nil {
			return fmt.Errorf("flush the build log stream: %w", err)
		}
		return nil
	}
	err := s.deps.Builds.Follow(r.Context(), caller(r), buildID(r),
		func(b builds.Build) error { return event("build", b) },
		func(ev builds.Event) error { return event(ev.Type, ev) })
	if err != nil && !started {
		s.writeErr(w, r, err)
	}
}

func (s *Server) listTemplates(w http.ResponseWriter, r *http.Request) {
	ts, err := s.deps.Service.ListTemplates(r.Context(), caller(r))
	if err != nil {
		s.writeErr(w, r, err)
		return
	}
	WriteJSON(w, http.StatusOK, map[string]any{"templates": ts})
}

func (s *Server) deleteTemplate(w http.ResponseWriter, r *http.Request) {
	if _, err := s.deps.Service.DeleteTemplate(r.Context(), caller(r), pathParam(r, "name")); err != nil {
		s.writeErr(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}
