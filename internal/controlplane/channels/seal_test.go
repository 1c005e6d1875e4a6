package channels

import (
	"bytes"
	"crypto/rand"
	"testing"
)

func randKey(t *testing.T) []byte {
	t.Helper()
	k := make([]byte, 32)
	if _, err := rand.Read(k); err != nil {
		t.Fatal(err)
	}
	return k
}

func TestSealOpen(t *testing.T) {
	oldKey, newKey, otherKey := randKey(t), randKey(t), randKey(t)
	oldRing, _ := NewKeyring(oldKey, nil)
	rotated, _ := NewKeyring(newKey, oldKey)
	other, _ := NewKeyring(otherKey, nil)
	secret := []byte(`{"config":{"url":"https://hooks.example.com/x","secret":"s3cr3t-value-123456"}}`)
	blob, err := oldRing.Seal("ch-one", secret)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(blob, []byte("s3cr3t")) {
		t.Fatal("sealed blob holds the plaintext")
	}
	fresh, _ := rotated.Seal("ch-one", secret)
	tamper := append([]byte(nil), blob...)
	tamper[len(tamper)-1] ^= 1
	for _, tc := range []struct {
		name  string
		ring  *Keyring
		row   string
		blob  []byte
		ok    bool
		stale bool
	}{
		{"same key", oldRing, "ch-one", blob, true, false},
		{"previous key opens and is stale", rotated, "ch-one", blob, true, true},
		{"current key after rotation", rotated, "ch-one", fresh, true, false},
		{"other row (AAD)", oldRing, "ch-two", blob, false, false},
		{"unknown key", other, "ch-one", blob, false, false},
		{"tampered", oldRing, "ch-one", tamper, false, false},
		{"truncated", oldRing, "ch-one", blob[:8], false, false},
		{"new key without previous", other, "ch-one", fresh, false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pt, stale, err := tc.ring.Open(tc.row, tc.blob)
			if (err == nil) != tc.ok {
				t.Fatalf("Open err = %v, want ok=%v", err, tc.ok)
			}
			if !tc.ok {
				return
			}
			if stale != tc.stale || !bytes.Equal(pt, secret) {
				t.Fatalf("Open = %q stale=%v, want the plaintext stale=%v", pt, stale, tc.stale)
			}
		})
	}
	if _, err := NewKeyring(make([]byte, 16), nil); err == nil {
		t.Fatal("a 16-byte key was accepted")
	}
}
