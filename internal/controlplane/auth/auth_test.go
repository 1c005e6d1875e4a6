package auth

import (
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

const secret = "0123456789abcdef0123456789abcdef"

func TestTokensRoundTripAndRejects(t *testing.T) {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	clock := func() time.Time { return now }
	tk, err := NewTokens(secret, time.Hour, clock)
	if err != nil {
		t.Fatal(err)
	}
	tok, exp, err := tk.Issue("usr-a", "team-b", 0)
	if err != nil || !exp.Equal(now.Add(time.Hour)) {
		t.Fatalf("issue: %v %v", exp, err)
	}
	c, err := tk.Parse(tok)
	if err != nil || c.Subject != "usr-a" || c.TeamID != "team-b" {
		t.Fatalf("parse: %+v %v", c, err)
	}
	tok2, _, _ := tk.Issue("usr-a", "team-b", 0)
	if tok2 == tok {
		t.Fatal("two sessions issued at the same instant are identical")
	}

	other, _ := NewTokens(strings.Repeat("z", 32), time.Hour, clock)
	forged, _, _ := other.Issue("usr-a", "team-b", 0)
	sign := func(m jwt.SigningMethod, key any, claims jwt.Claims) string {
		s, err := jwt.NewWithClaims(m, claims).SignedString(key)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	valid := Claims{TeamID: "team-b", RegisteredClaims: jwt.RegisteredClaims{Subject: "usr-a", Issuer: "wrenn", ExpiresAt: jwt.NewNumericDate(now.Add(time.Hour))}}
	noExp := valid
	noExp.ExpiresAt = nil
	wrongIss := valid
	wrongIss.Issuer = "someone"
	noTeam := valid
	noTeam.TeamID = ""
	bad := map[string]string{
		"garbage":       "not.a.token",
		"empty":         "",
		"other secret":  forged,
		"alg none":      sign(jwt.SigningMethodNone, jwt.UnsafeAllowNoneSignatureType, valid),
		"HS384":         sign(jwt.SigningMethodHS384, []byte(secret), valid),
		"no expiry":     sign(jwt.SigningMethodHS256, []byte(secret), noExp),
		"wrong issuer":  sign(jwt.SigningMethodHS256, []byte(secret), wrongIss),
		"no team":       sign(jwt.SigningMethodHS256, []byte(secret), noTeam),
		"tampered team": tok[:len(tok)-2] + "xx",
	}
	for name, b := range bad {
		if _, err := tk.Parse(b); err != ErrInvalidToken {
			t.Errorf("%s: accepted or wrong error: %v", name, err)
		}
	}
	later, _ := NewTokens(secret, time.Hour, func() time.Time { return now.Add(2 * time.Hour) })
	if _, err := later.Parse(tok); err != ErrInvalidToken {
		t.Fatalf("expired token accepted: %v", err)
	}
	if _, err := NewTokens("short", time.Hour, nil); err == nil {
		t.Fatal("short secret accepted")
	}
}

func TestAPIKeys(t *testing.T) {
	seen := map[string]bool{}
	for range 100 {
		plain, prefix, hash, err := NewAPIKey()
		if err != nil {
			t.Fatal(err)
		}
		if !LooksLikeAPIKey(plain) || !strings.HasPrefix(plain, "wrn_") || len(plain) != 44 || !strings.HasPrefix(plain, prefix) || len(prefix) != 10 {
			t.Fatalf("key %q prefix %q", plain, prefix)
		}
		if hash != HashAPIKey(plain) || len(hash) != 64 || strings.Contains(hash, plain) {
			t.Fatalf("hash %q", hash)
		}
		if seen[plain] {
			t.Fatal("duplicate key")
		}
		seen[plain] = true
	}
	for _, bad := range []string{"", "wrn_", "wrn_short", "xyz_" + strings.Repeat("a", 40), "wrn_" + strings.Repeat("!", 40), "wrn_" + strings.Repeat("a", 41)} {
		if LooksLikeAPIKey(bad) {
			t.Errorf("%q looks like a key", bad)
		}
	}
}

func TestPasswords(t *testing.T) {
	p := Passwords{Cost: 4}
	h, err := p.Hash("hunter2hunter2")
	if err != nil || strings.Contains(h, "hunter2") {
		t.Fatalf("hash %q %v", h, err)
	}
	if !p.Check(h, "hunter2hunter2") || p.Check(h, "hunter2hunter3") || p.Check("not a hash", "x") {
		t.Fatal("check wrong")
	}
}
