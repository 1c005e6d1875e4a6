package localsvc

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"strings"
	"unicode"
)

// NewSecret returns 32 random bytes as 64 hex characters.
func NewSecret() (string, error) {
	raw := make([]byte, 32)
	if _, err := rand.Read(raw); err != nil {
		return "", fmt.Errorf("make secret: %w", err)
	}
	return hex.EncodeToString(raw), nil
}

// Secret returns the secret kept in path, so that a restart reuses what the
// last run made. A missing file, or one holding fewer than minLen
// characters or control characters inside (they would break the config
// line or statement the secret goes into), gets a NewSecret, written with
// mode 0600.
func Secret(path string, minLen int) (string, error) {
	b, err := os.ReadFile(path)
	if s := strings.TrimSpace(string(b)); err == nil && len(s) >= minLen && !strings.ContainsFunc(s, unicode.IsControl) {
		return s, nil
	}
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return "", fmt.Errorf("read secret %s: %w", path, err)
	}
	secret, err := NewSecret()
	if err != nil {
		return "", err
	}
	tmp := path + ".tmp"
	_ = os.Remove(tmp) // WriteFile would keep the mode of one left behind
	if err := os.WriteFile(tmp, []byte(secret+"\n"), 0o600); err != nil {
		return "", fmt.Errorf("write secret %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return "", fmt.Errorf("write secret %s: %w", path, err)
	}
	return secret, nil
}
