package httpapi

import (
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"net/http"
	"net/url"
	"strconv"
	"time"
)

// Signed file URLs: E2B's SDKs (downloadUrl, uploadUrl) give a secure
// sandbox's /files URLs to programs that hold no access token, signed
// with it. The signature is "v1_" and the unpadded standard base64 of
// SHA-256("path:operation:user:token"), with ":expiration" (Unix seconds)
// appended when the URL expires.
const (
	signatureParam    = "signature"
	expirationParam   = "signature_expiration"
	signatureVersion1 = "v1_"
)

// Operations a signature is for.
const (
	opRead  = "read"
	opWrite = "write"
)

var (
	errSignatureInvalid = errors.New("invalid file URL signature")
	errSignatureExpired = errors.New("the file URL signature has expired")
)

// FileSignature is the signature of a /files URL for path, operation
// (read, write) and user under token; expiration is Unix seconds, 0 for
// none.
func FileSignature(path, operation, user, token string, expiration int64) string {
	raw := path + ":" + operation + ":" + user + ":" + token
	if expiration != 0 {
		raw += ":" + strconv.FormatInt(expiration, 10)
	}
	sum := sha256.Sum256([]byte(raw))
	return signatureVersion1 + base64.RawStdEncoding.EncodeToString(sum[:])
}

// hasSignature reports whether r asks to be let in by a URL signature.
func hasSignature(r *http.Request) bool {
	return r.URL.Path == "/files" && r.URL.Query().Has(signatureParam)
}

// checkSignature verifies the signature of a /files request against token.
func checkSignature(r *http.Request, token string, now time.Time) error {
	var op string
	switch r.Method {
	case http.MethodGet, http.MethodHead:
		op = opRead
	case http.MethodPost:
		op = opWrite
	default:
		return errSignatureInvalid
	}
	q := r.URL.Query()
	var exp int64
	if v := q.Get(expirationParam); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n <= 0 {
			return errSignatureInvalid
		}
		exp = n
	}
	want := FileSignature(q.Get("path"), op, q.Get("username"), token, exp)
	if subtle.ConstantTimeCompare([]byte(q.Get(signatureParam)), []byte(want)) != 1 {
		return errSignatureInvalid
	}
	// Checked after the signature, so a forged expiration says "invalid".
	if exp != 0 && now.Unix() > exp {
		return errSignatureExpired
	}
	return nil
}

// SignedFileURL returns base's /files URL for path, signed (for tests and
// any Go client): the query the SDKs build.
func SignedFileURL(base, path, operation, user, token string, expiration int64) string {
	q := url.Values{}
	if path != "" {
		q.Set("path", path)
	}
	if user != "" {
		q.Set("username", user)
	}
	q.Set(signatureParam, FileSignature(path, operation, user, token, expiration))
	if expiration != 0 {
		q.Set(expirationParam, strconv.FormatInt(expiration, 10))
	}
	return base + "/files?" + q.Encode()
}
