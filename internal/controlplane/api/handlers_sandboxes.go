package api

import (
	"errors"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"github.com/go-chi/chi/v5"

	"github.com/wrenn-dev/wrenn/internal/controlplane/service"
)

func sandboxID(r *http.Request) string { return chi.URLParam(r, "sandbox_id") }

// pathParam is a path parameter, percent-decoded (chi matches on the raw
// path when the request has escapes, so a tag like "a b" arrives as "a%20b").
func pathParam(r *http.Request, name string) string {
	v := chi.URLParam(r, name)
	if u, err := url.PathUnescape(v); err == nil {
		return u
	}
	return v
}

func (s *Server) createSandbox(w http.ResponseWriter, r *http.Request) {
	var in service.CreateSandboxInput
	if err := decodeJSON(r, &in, true); err != nil {
		s.writeErr(w, r, err)
		return
	}
	opts := service.CreateOptions{ID: resourceID(r), Async: prefersAsync(r)}
	sb, err := s.deps.Service.StartSandbox(r.Context(), caller(r), in, opts)
	if err != nil {
		s.writeErr(w, r, err)
		return
	}
	if opts.Async {
		w.Header().Set("Preference-Applied", "respond-async")
		if sb.Status == service.StatusPending {
			// The boot goes on under the create's operation lease.
			WriteJSON(w, http.StatusAccepted, sb)
			return
		}
	}
	WriteJSON(w, http.StatusCreated, sb)
}

// parseListQuery reads ?status=a,b&limit=&cursor=&metadata.key=value.
// multiValues reads a filter given comma-separated, repeated, or both.
func multiValues(q url.Values, name string) []string {
	var out []string
	for _, v := range q[name] {
		for _, part := range strings.Split(v, ",") {
			if part = strings.TrimSpace(part); part != "" {
				out = append(out, part)
			}
		}
	}
	return out
}

// pageLimit reads the limit of a list route; 0 when absent (the default).
func pageLimit(q url.Values) (int, error) {
	v := q.Get("limit")
	if v == "" {
		return 0, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil {
		return 0, service.Invalid("limit", "limit must be a whole number")
	}
	if n == 0 {
		return 0, service.Invalid("limit", "limit must be between 1 and %d", service.MaxPageSize)
	}
	return n, nil
}

func parseListQuery(r *http.Request) (service.ListSandboxesInput, error) {
	q := r.URL.Query()
	var in service.ListSandboxesInput
	for _, st := range multiValues(q, "status") {
		in.Statuses = append(in.Statuses, service.Status(st))
	}
	var err error
	if in.Limit, err = pageLimit(q); err != nil {
		return in, err
	}
	in.Cursor = q.Get("cursor")
	for k, vs := range q {
		if key, ok := strings.CutPrefix(k, "metadata."); ok {
			if in.Metadata == nil {
				in.Metadata = map[string]string{}
			}
			in.Metadata[key] = vs[0]
		}
	}
	return in, nil
}

func (s *Server) listSandboxes(w http.ResponseWriter, r *http.Request) {
	in, err := parseListQuery(r)
	if err != nil {
		s.writeErr(w, r, err)
		return
	}
	page, err := s.deps.Service.ListSandboxes(r.Context(), caller(r), in)
	if err != nil {
		s.writeErr(w, r, err)
		return
	}
	WriteJSON(w, http.StatusOK, page)
}

func (s *Server) getSandbox(w http.ResponseWriter, r *http.Request) {
	sb, err := s.deps.Service.GetSandbox(r.Context(), caller(r), sandboxID(r))
	if err != nil {
		s.writeErr(w, r, err)
		return
	}
	WriteJSON(w, http.StatusOK, sb)
}

func (s *Server) deleteSandbox(w http.ResponseWriter, r *http.Request) {
	sb, err := s.deps.Service.DestroySandbox(r.Context(), caller(r), sandboxID(r))
	if err != nil {
		s.writeErr(w, r, err)
		return
	}
	if sb.Status == service.StatusStopping {
		// The host is away: the VM is destroyed when it answers.
		WriteJSON(w, http.StatusAccepted, sb)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) pauseSandbox(w http.ResponseWriter, r *http.Request) {
	var in struct{}
	if err := decodeJSON(r, &in, true); err != nil {
		s.writeErr(w, r, err)
		return
	}
	sb, err := s.deps.Service.PauseSandbox(r.Context(), caller(r), sandboxID(r))
	if takenOver(r) {
		sb, err = s.deps.Service.AlreadyIn(r.Context(), caller(r), sandboxID(r), service.StatusPaused, sb, err)
	}
	if err != nil {
		s.writeErr(w, r, err)
		return
	}
	WriteJSON(w, http.StatusOK, sb)
}

func (s *Server) resumeSandbox(w http.ResponseWriter, r *http.Request) {
	var in service.ResumeInput
	if err := decodeJSON(r, &in, true); err != nil {
		s.writeErr(w, r, err)
		return
	}
	sb, err := s.deps.Service.ResumeSandbox(r.Context(), caller(r), sandboxID(r), in)
	if takenOver(r) {
		sb, err = s.deps.Service.AlreadyIn(r.Context(), caller(r), sandboxID(r), service.StatusRunning, sb, err)
	}
	if err != nil {
		s.writeErr(w, r, err)
		return
	}
	WriteJSON(w, http.StatusOK, sb)
}

func (s *Server) pingSandbox(w http.ResponseWriter, r *http.Request) {
	res, err := s.deps.Service.PingSandbox(r.Context(), caller(r), sandboxID(r))
	if err != nil {
		s.writeErr(w, r, err)
		return
	}
	WriteJSON(w, http.StatusOK, res)
}

// sandboxHistory is GET /v1/sandboxes/{id}/metrics?range=: the stored
// samples, also of a paused or stopped sandbox.
func (s *Server) sandboxHistory(w http.ResponseWriter, r *http.Request) {
	if s.deps.Stats == nil {
		WriteError(w, service.CodeServiceUnavailable, "usage metrics are not configured")
		return
	}
	h, err := s.deps.Stats.SandboxHistory(r.Context(), caller(r).TeamID, sandboxID(r), r.URL.Query().Get("range"))
	if err != nil {
		s.writeErr(w, r, err)
		return
	}
	WriteJSON(w, http.StatusOK, h)
}

func (s *Server) sandboxStats(w http.ResponseWriter, r *http.Request) {
	if s.deps.Stats == nil {
		WriteError(w, service.CodeServiceUnavailable, "usage metrics are not configured")
		return
	}
	st, err := s.deps.Stats.TeamStats(r.Context(), caller(r).TeamID, r.URL.Query().Get("range"))
	if err != nil {
		s.writeErr(w, r, err)
		return
	}
	WriteJSON(w, http.StatusOK, st)
}

func (s *Server) sandboxMetrics(w http.ResponseWriter, r *http.Request) {
	if r.URL.Query().Has("range") {
		s.sandboxHistory(w, r)
		return
	}
	m, err := s.deps.Service.SandboxMetrics(r.Context(), caller(r), sandboxID(r))
	if err != nil {
		s.writeErr(w, r, err)
		return
	}
	WriteJSON(w, http.StatusOK, m)
}

func (s *Server) execSandbox(w http.ResponseWriter, r *http.Request) {
	var in service.ExecInput
	if err := decodeJSON(r, &in, false); err != nil {
		s.writeErr(w, r, err)
		return
	}
	res, bg, err := s.deps.Service.Exec(r.Context(), caller(r), sandboxID(r), in)
	if err != nil {
		s.writeErr(w, r, err)
		return
	}
	if bg != nil {
		WriteJSON(w, http.StatusOK, bg)
		return
	}
	WriteJSON(w, http.StatusOK, res)
}

func (s *Server) listProcesses(w http.ResponseWriter, r *http.Request) {
	ps, err := s.deps.Service.ListProcesses(r.Context(), caller(r), sandboxID(r))
	if err != nil {
		s.writeErr(w, r, err)
		return
	}
	WriteJSON(w, http.StatusOK, map[string]any{"processes": ps})
}

func (s *Server) killProcess(w http.ResponseWriter, r *http.Request) {
	err := s.deps.Service.KillProcess(r.Context(), caller(r), sandboxID(r), pathParam(r, "process"), r.URL.Query().Get("signal"))
	if err != nil {
		s.writeErr(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// writeFile streams a multipart upload to the agent. The `path` (and
// optional `mode`, octal) fields must come before `file`, because the file
// part is forwarded as it arrives; `?path=` works too.
func (s *Server) writeFile(w http.ResponseWriter, r *http.Request) {
	r.Body = http.MaxBytesReader(w, r.Body, s.deps.MaxUploadBytes)
	mr, err := r.MultipartReader()
	if err != nil {
		s.writeErr(w, r, service.Invalid("", "the body must be multipart/form-data with `path` and `file` parts"))
		return
	}
	path := r.URL.Query().Get("path")
	var mode uint32
	for {
		part, err := mr.NextPart()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			s.writeErr(w, r, multipartErr(err))
			return
		}
		switch part.FormName() {
		case "path", "mode":
			v, err := io.ReadAll(io.LimitReader(part, 4097))
			if err != nil {
				s.writeErr(w, r, multipartErr(err))
				return
			}
			if part.FormName() == "path" {
				path = string(v)
				continue
			}
			m, err := strconv.ParseUint(strings.TrimSpace(string(v)), 8, 32)
			if err != nil {
				s.writeErr(w, r, service.Invalid("mode", "mode must be octal permission bits such as 644"))
				return
			}
			mode = uint32(m)
		case "file":
			if path == "" {
				s.writeErr(w, r, service.Invalid("path", "the `path` field must come before `file`"))
				return
			}
			res, err := s.deps.Service.WriteFile(r.Context(), caller(r), sandboxID(r), path, mode, part)
			if err != nil {
				s.writeErr(w, r, err)
				return
			}
			WriteJSON(w, http.StatusOK, res)
			return
		default:
			s.writeErr(w, r, service.Invalid(part.FormName(), "unknown form field %q; expected path, mode and file", part.FormName()))
			return
		}
	}
	s.writeErr(w, r, service.Invalid("file", "the `file` part is required"))
}

func multipartErr(err error) error {
	var mbe *http.MaxBytesError
	if errors.As(err, &mbe) {
		return &service.Error{Kind: service.CodeTooLarge.Kind(), Code: service.CodeTooLarge, Message: "the upload is larger than allowed"}
	}
	return service.Invalid("", "malformed multipart body")
}

// pathOnly is the body of read, mkdir and remove.
type pathOnly struct {
	Path string `json:"path"`
}

func (s *Server) readFile(w http.ResponseWriter, r *http.Request) {
	var in pathOnly
	if err := decodeJSON(r, &in, false); err != nil {
		s.writeErr(w, r, err)
		return
	}
	f, err := s.deps.Service.ReadFile(r.Context(), caller(r), sandboxID(r), in.Path)
	if err != nil {
		s.writeErr(w, r, err)
		return
	}
	defer f.Close()
	w.Header().Set("Content-Type", "application/octet-stream")
	if f.Size >= 0 {
		w.Header().Set("Content-Length", strconv.FormatInt(f.Size, 10))
	}
	w.WriteHeader(http.StatusOK)
	if _, err := io.Copy(w, f); err != nil {
		s.deps.Logger.WarnContext(r.Context(), "file download cut", "sandbox_id", sandboxID(r), "err", err)
		// Break the connection so the client sees a truncated transfer,
		// not a short file.
		panic(http.ErrAbortHandler)
	}
}

func (s *Server) listDir(w http.ResponseWriter, r *http.Request) {
	var in service.PathInput
	if err := decodeJSON(r, &in, false); err != nil {
		s.writeErr(w, r, err)
		return
	}
	es, err := s.deps.Service.ListDir(r.Context(), caller(r), sandboxID(r), in)
	if err != nil {
		s.writeErr(w, r, err)
		return
	}
	WriteJSON(w, http.StatusOK, map[string]any{"entries": es})
}

func (s *Server) makeDir(w http.ResponseWriter, r *http.Request) {
	var in pathOnly
	if err := decodeJSON(r, &in, false); err != nil {
		s.writeErr(w, r, err)
		return
	}
	e, err := s.deps.Service.MakeDir(r.Context(), caller(r), sandboxID(r), service.PathInput{Path: in.Path})
	if err != nil {
		s.writeErr(w, r, err)
		return
	}
	WriteJSON(w, http.StatusOK, e)
}

func (s *Server) removePath(w http.ResponseWriter, r *http.Request) {
	var in pathOnly
	if err := decodeJSON(r, &in, false); err != nil {
		s.writeErr(w, r, err)
		return
	}
	if err := s.deps.Service.RemovePath(r.Context(), caller(r), sandboxID(r), service.PathInput{Path: in.Path}); err != nil {
		s.writeErr(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) createSnapshot(w http.ResponseWriter, r *http.Request) {
	var in service.SnapshotInput
	if err := decodeJSON(r, &in, false); err != nil {
		s.writeErr(w, r, err)
		return
	}
	snap, err := s.deps.Service.CreateSnapshotAs(r.Context(), caller(r), in, resourceID(r))
	if err != nil {
		s.writeErr(w, r, err)
		return
	}
	WriteJSON(w, http.StatusCreated, snap)
}

func (s *Server) listSnapshots(w http.ResponseWriter, r *http.Request) {
	snaps, err := s.deps.Service.ListSnapshots(r.Context(), caller(r))
	if err != nil {
		s.writeErr(w, r, err)
		return
	}
	WriteJSON(w, http.StatusOK, map[string]any{"snapshots": snaps})
}

func (s *Server) deleteSnapshot(w http.ResponseWriter, r *http.Request) {
	if err := s.deps.Service.DeleteSnapshot(r.Context(), caller(r), pathParam(r, "name")); err != nil {
		s.writeErr(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}
