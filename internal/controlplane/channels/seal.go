package channels

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
)

// A sealed blob is: format byte (1), the key id (4 bytes: the start of the
// SHA-256 of the key, so keys rotate without a numbering scheme to keep),
// the GCM nonce (12), the ciphertext with its tag. The channel id is the
// additional data, so a blob copied onto another row does not open.
const (
	sealFormat = 1
	keyIDLen   = 4
	headerLen  = 1 + keyIDLen
)

// Keyring seals with the current key and opens with it or the previous one.
type Keyring struct {
	current  sealKey
	previous *sealKey
}

type sealKey struct {
	id   [keyIDLen]byte
	aead cipher.AEAD
}

// NewKeyring builds a keyring from raw 32-byte keys; previous may be nil.
func NewKeyring(current, previous []byte) (*Keyring, error) {
	c, err := newSealKey(current)
	if err != nil {
		return nil, fmt.Errorf("current key: %w", err)
	}
	kr := &Keyring{current: c}
	if previous != nil {
		p, err := newSealKey(previous)
		if err != nil {
			return nil, fmt.Errorf("previous key: %w", err)
		}
		kr.previous = &p
	}
	return kr, nil
}

func newSealKey(k []byte) (sealKey, error) {
	if len(k) != 32 {
		return sealKey{}, fmt.Errorf("an AES-256 key is 32 bytes, got %d", len(k))
	}
	block, err := aes.NewCipher(k)
	if err != nil {
		return sealKey{}, fmt.Errorf("aes: %w", err)
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return sealKey{}, fmt.Errorf("gcm: %w", err)
	}
	sum := sha256.Sum256(k)
	var id [keyIDLen]byte
	copy(id[:], sum[:keyIDLen])
	return sealKey{id: id, aead: aead}, nil
}

// Seal encrypts plaintext for the row id with the current key.
func (k *Keyring) Seal(rowID string, plaintext []byte) ([]byte, error) {
	a := k.current.aead
	out := make([]byte, headerLen+a.NonceSize(), headerLen+a.NonceSize()+len(plaintext)+a.Overhead())
	out[0] = sealFormat
	copy(out[1:headerLen], k.current.id[:])
	if _, err := rand.Read(out[headerLen:]); err != nil {
		return nil, fmt.Errorf("seal: nonce: %w", err)
	}
	return a.Seal(out, out[headerLen:], plaintext, []byte(rowID)), nil
}

// Open decrypts a blob sealed for rowID. stale reports that it was sealed
// with the previous key, so the caller re-seals it on its next write.
func (k *Keyring) Open(rowID string, blob []byte) (plaintext []byte, stale bool, err error) {
	if len(blob) < headerLen || blob[0] != sealFormat {
		return nil, false, errors.New("open sealed config: unknown format")
	}
	var id [keyIDLen]byte
	copy(id[:], blob[1:headerLen])
	key := k.current
	switch {
	case id == k.current.id:
	case k.previous != nil && id == k.previous.id:
		key, stale = *k.previous, true
	default:
		return nil, false, errors.New("open sealed config: sealed with a key that is neither WRENN_ENCRYPTION_KEY nor WRENN_ENCRYPTION_KEY_PREVIOUS")
	}
	ns := key.aead.NonceSize()
	if len(blob) < headerLen+ns+key.aead.Overhead() {
		return nil, false, errors.New("open sealed config: too short")
	}
	pt, err := key.aead.Open(nil, blob[headerLen:headerLen+ns], blob[headerLen+ns:], []byte(rowID))
	if err != nil {
		return nil, false, errors.New("open sealed config: authentication failed (wrong key or row)")
	}
	return pt, stale, nil
}
