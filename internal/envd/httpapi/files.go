package httpapi

import (
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"mime"
	"mime/multipart"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/wrenn-dev/wrenn/internal/envd/filemeta"
	"github.com/wrenn-dev/wrenn/internal/envd/filesystem"
	"github.com/wrenn-dev/wrenn/internal/envd/users"
)

// copyBufSize is the buffer used to stream uploads to disk.
const copyBufSize = 256 << 10

// EntryInfo is one written file in the POST /files answer.
type EntryInfo struct {
	Path string `json:"path"`
	Name string `json:"name"`
	Type string `json:"type"`
	// Metadata is the file's user metadata (filemeta) after the write.
	Metadata map[string]string `json:"metadata,omitempty"`
}

// requestUser resolves the "username" query parameter (default user when absent).
func (a *API) requestUser(r *http.Request) (*users.User, int, error) {
	name := r.URL.Query().Get("username")
	if name == "" {
		name = a.cfg.Env.State.DefaultUser()
	}
	u, err := users.Lookup(name)
	if err != nil {
		if errors.Is(err, users.ErrUnknown) {
			return nil, http.StatusUnauthorized, err
		}
		return nil, http.StatusInternalServerError, err
	}
	return u, 0, nil
}

func (a *API) download(w http.ResponseWriter, r *http.Request) {
	u, code, err := a.requestUser(r)
	if err != nil {
		writeError(w, code, err.Error())
		return
	}
	p, err := a.cfg.Env.Resolver.Resolve(r.URL.Query().Get("path"), u.Home)
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	f, err := os.Open(p)
	if err != nil {
		switch {
		case errors.Is(err, fs.ErrNotExist):
			writeError(w, http.StatusNotFound, fmt.Sprintf("path %q does not exist", r.URL.Query().Get("path")))
		case errors.Is(err, fs.ErrPermission):
			writeError(w, http.StatusUnauthorized, fmt.Sprintf("permission denied: %q", r.URL.Query().Get("path")))
		default:
			// A path through a file or with too long a name is the
			// caller's mistake, not envd's.
			writeError(w, errStatus(err), err.Error())
		}
		return
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		writeError(w, http.StatusInternalServerError, err.Error())
		return
	}
	if st.IsDir() {
		writeError(w, http.StatusBadRequest, fmt.Sprintf("path %q is a directory", r.URL.Query().Get("path")))
		return
	}
	if !canAccess(u, st, 4) {
		writeError(w, http.StatusUnauthorized, fmt.Sprintf("user %q may not read %q", u.Name, r.URL.Query().Get("path")))
		return
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Content-Disposition", mime.FormatMediaType("attachment", map[string]string{"filename": filepath.Base(p)}))
	// ServeContent streams (sendfile where it can) and handles Range.
	http.ServeContent(w, r, "", st.ModTime(), f)
}

// canAccess checks the permission bits (want: 4 read, 2 write) for u,
// because envd itself usually runs as root.
func canAccess(u *users.User, st fs.FileInfo, want uint32) bool {
	sys, ok := st.Sys().(*syscall.Stat_t)
	if !ok || u.UID == 0 {
		return true
	}
	mode := uint32(st.Mode().Perm())
	switch {
	case sys.Uid == u.UID:
		return mode>>6&want == want
	case sys.Gid == u.GID || contains(u.Groups, sys.Gid):
		return mode>>3&want == want
	default:
		return mode&want == want
	}
}

func contains(s []uint32, v uint32) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

func (a *API) upload(w http.ResponseWriter, r *http.Request) {
	u, code, err := a.requestUser(r)
	if err != nil {
		writeError(w, code, err.Error())
		return
	}
	qpath := r.URL.Query().Get("path")
	md, err := filemeta.FromHeader(r.Header)
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	body := io.Reader(r.Body)
	if strings.EqualFold(r.Header.Get("Content-Encoding"), "gzip") {
		zr, err := gzip.NewReader(r.Body)
		if err != nil {
			writeError(w, http.StatusBadRequest, fmt.Sprintf("gzip body: %v", err))
			return
		}
		defer zr.Close()
		body = zr
	}
	ct, params, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
	var written []EntryInfo
	if ct == "multipart/form-data" {
		boundary := params["boundary"]
		if boundary == "" {
			writeError(w, http.StatusBadRequest, "multipart body without boundary")
			return
		}
		// Parts are read as a stream: unlike ParseMultipartForm nothing is
		// buffered in memory or spilled to temporary files.
		mr := multipart.NewReader(body, boundary)
		for {
			part, err := mr.NextPart()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				writeError(w, http.StatusBadRequest, fmt.Sprintf("read multipart body: %v", err))
				return
			}
			if part.FormName() != "file" {
				part.Close()
				continue
			}
			target := qpath
			if target == "" {
				target = rawFileName(part.Header.Get("Content-Disposition"))
			}
			if target == "" {
				part.Close()
				writeError(w, http.StatusBadRequest, "path query parameter or a part file name is required")
				return
			}
			e, code, err := a.writeFile(u, target, part, md)
			part.Close()
			if err != nil {
				writeError(w, code, err.Error())
				return
			}
			written = append(written, e)
		}
		if len(written) == 0 {
			writeError(w, http.StatusBadRequest, `multipart body has no "file" field`)
			return
		}
	} else {
		if qpath == "" {
			writeError(w, http.StatusBadRequest, "path query parameter is required for a raw body")
			return
		}
		e, code, err := a.writeFile(u, qpath, body, md)
		if err != nil {
			writeError(w, code, err.Error())
			return
		}
		written = append(written, e)
	}
	writeJSON(w, http.StatusOK, written)
}

// writeFile streams src to the client path target through a staged
// atomic replacement (uploads), so readers never see a partial file and a
// failed upload leaves the old content; an existing file keeps its mode and
// metadata, md is added to it.
func (a *API) writeFile(u *users.User, target string, src io.Reader, md map[string]string) (EntryInfo, int, error) {
	p, err := a.cfg.Env.Resolver.Resolve(target, u.Home)
	if err != nil {
		return EntryInfo{}, http.StatusBadRequest, err
	}
	existing, err := os.Stat(p)
	if err != nil {
		existing = nil
	}
	if existing != nil && existing.IsDir() {
		return EntryInfo{}, http.StatusBadRequest, fmt.Errorf("path %q is a directory", target)
	}
	if err := checkWritable(u, p, existing); err != nil {
		return EntryInfo{}, http.StatusUnauthorized, fmt.Errorf("user %q may not write %q: %w", u.Name, target, err)
	}
	if err := filesystem.MkdirAllAs(filepath.Dir(p), u); err != nil {
		return EntryInfo{}, errStatus(err), fmt.Errorf("create parent directories of %q: %w", target, err)
	}
	// A new file is the user's; a replaced one keeps its owner and mode,
	// as a write in place would.
	mode, owner := os.FileMode(0o644), ownerOf(u)
	if existing != nil {
		mode = existing.Mode().Perm()
		if sys, ok := existing.Sys().(*syscall.Stat_t); ok {
			owner = &[2]int{int(sys.Uid), int(sys.Gid)}
		}
	}
	f, err := a.cfg.Env.Uploads.Create(p, mode)
	if err != nil {
		return EntryInfo{}, errStatus(err), fmt.Errorf("create temporary file for %q: %w", target, err)
	}
	defer f.Abort()
	buf := make([]byte, copyBufSize)
	if _, err := io.CopyBuffer(f, src, buf); err != nil {
		return EntryInfo{}, errStatus(err), fmt.Errorf("write %q: %w", target, err)
	}
	if owner != nil && (owner[0] != os.Getuid() || owner[1] != os.Getgid()) {
		if err := f.Temp().Chown(owner[0], owner[1]); err != nil {
			return EntryInfo{}, http.StatusInternalServerError, fmt.Errorf("chown %q: %w", target, err)
		}
	}
	if err := filemeta.Carry(f.Temp(), p, md); err != nil {
		return EntryInfo{}, errStatus(err), fmt.Errorf("metadata of %q: %w", target, err)
	}
	if err := f.Commit(); err != nil {
		return EntryInfo{}, errStatus(err), fmt.Errorf("write %q: %w", target, err)
	}
	a.cfg.Env.Uploads.Landed(p)
	got, err := filemeta.Read(p)
	if err != nil {
		return EntryInfo{}, errStatus(err), fmt.Errorf("read metadata of %q: %w", target, err)
	}
	return EntryInfo{Path: a.cfg.Env.Resolver.Client(p), Name: filepath.Base(p), Type: "file", Metadata: got}, 0, nil
}

func errStatus(err error) int {
	switch {
	case errors.Is(err, syscall.ENOSPC), errors.Is(err, syscall.EDQUOT):
		return http.StatusInsufficientStorage
	case errors.Is(err, fs.ErrPermission):
		return http.StatusUnauthorized
	case errors.Is(err, filemeta.ErrInvalid):
		return http.StatusBadRequest
	case errors.Is(err, syscall.ENOTDIR), errors.Is(err, syscall.EISDIR), errors.Is(err, syscall.ENAMETOOLONG):
		return http.StatusBadRequest
	default:
		return http.StatusInternalServerError
	}
}

// checkWritable applies the permissions u would meet writing p, since envd
// itself runs as root: an existing file (existing, nil if none) must be
// writable by u, as for a write in place; for a new file the nearest
// existing directory above it must be writable and searchable (that is
// where u's new file or directories go).
func checkWritable(u *users.User, p string, existing fs.FileInfo) error {
	if existing != nil {
		if !canAccess(u, existing, 2) {
			return fs.ErrPermission
		}
		return nil
	}
	for dir := filepath.Dir(p); ; dir = filepath.Dir(dir) {
		st, err := os.Stat(dir)
		if err == nil {
			if !st.IsDir() {
				return nil // the write reports ENOTDIR itself
			}
			if !canAccess(u, st, 3) {
				return fs.ErrPermission
			}
			return nil
		}
		if dir == filepath.Dir(dir) {
			return nil
		}
	}
}

// ownerOf is the uid and gid a new file of u gets (nil: envd's own).
func ownerOf(u *users.User) *[2]int {
	if u.IsSelf() {
		return nil
	}
	return &[2]int{int(u.UID), int(u.GID)}
}

// rawFileName returns the filename parameter as sent: E2B SDKs put a whole
// path there when writing several files, which Part.FileName would cut to
// its base name.
func rawFileName(disposition string) string {
	_, params, err := mime.ParseMediaType(disposition)
	if err != nil {
		return ""
	}
	return params["filename"]
}
