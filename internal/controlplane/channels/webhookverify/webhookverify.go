// Package webhookverify is the receiver's side of X-WRENN-SIGNATURE, written
// as docs/webhooks.md tells receivers to write it and apart from the
// signer (channels.Signature), so tests that check the signer do not reuse
// its code.
package webhookverify

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"strconv"
	"strings"
	"time"
)

// Tolerance is how far the signed timestamp may be from now.
const Tolerance = 5 * time.Minute

// Valid reports whether header (X-WRENN-SIGNATURE: "t=<unix>,v1=<hex>[,v1=...]")
// signs body with secret: the timestamp within Tolerance of now and any v1
// matching HMAC-SHA256 over "<t>.<raw body>".
func Valid(header string, body []byte, secret string, now time.Time) bool {
	var ts string
	var sigs []string
	for _, part := range strings.Split(header, ",") {
		k, v, _ := strings.Cut(part, "=")
		switch k {
		case "t":
			ts = v
		case "v1":
			sigs = append(sigs, v)
		}
	}
	sec, err := strconv.ParseInt(ts, 10, 64)
	if err != nil || now.Sub(time.Unix(sec, 0)).Abs() > Tolerance {
		return false
	}
	mac := hmac.New(sha256.New, []byte(secret))
	mac.Write([]byte(ts + "."))
	mac.Write(body)
	want := hex.EncodeToString(mac.Sum(nil))
	for _, s := range sigs {
		if hmac.Equal([]byte(s), []byte(want)) {
			return true
		}
	}
	return false
}
