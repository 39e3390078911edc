package auth

import (
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strings"
)

// MinSecretBytes is the shortest secret a secret file may hold once decoded.
// GitLab's .gitlab_kas_secret is exactly this long.
const MinSecretBytes = 32

// MaxSecretFileBytes is the largest secret file [ReadSecretFile] reads; a
// bigger file is not a secret file (a path to the wrong file, /dev/zero).
const MaxSecretFileBytes = 64 << 10

// NewSecret returns base64 (standard alphabet, padded) of MinSecretBytes
// random bytes: the content of a secret file.
func NewSecret() string {
	return base64.StdEncoding.EncodeToString(randomBytes(MinSecretBytes))
}

// randomBytes returns n bytes from crypto/rand, which never fails on the
// platforms Go supports (it crashes the program instead).
func randomBytes(n int) []byte {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return b
}

// ReadSecretFile reads a secret file: base64 of at least MinSecretBytes bytes.
// Whitespace anywhere (a trailing newline, line-wrapped output of
// `openssl rand -base64 64`) is ignored; the standard and the URL alphabets
// are both accepted, padded or not. Errors name the file and say what is
// wrong, never what it contains.
func ReadSecretFile(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("secret file %s: %w", path, fs.ErrNotExist)
		}
		return nil, fmt.Errorf("secret file %s: %w", path, err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, MaxSecretFileBytes+1))
	if err != nil {
		return nil, fmt.Errorf("secret file %s: %w", path, err)
	}
	if len(data) > MaxSecretFileBytes {
		return nil, fmt.Errorf("secret file %s: larger than %d bytes, not a secret file", path, MaxSecretFileBytes)
	}
	secret, err := decodeSecret(data)
	if err != nil {
		return nil, fmt.Errorf("secret file %s: %w", path, err)
	}
	return secret, nil
}

// decodeSecret decodes the content of a secret file. Its errors say what is
// wrong without quoting the content.
func decodeSecret(data []byte) ([]byte, error) {
	s := strings.Map(func(r rune) rune {
		switch r {
		case ' ', '\t', '\n', '\r', '\v', '\f':
			return -1
		}
		return r
	}, string(data))
	if s == "" {
		return nil, errors.New("is empty (generate a secret with `kasctl secret`)")
	}
	unpadded := strings.TrimRight(s, "=")
	if pad := len(s) - len(unpadded); pad > 2 {
		return nil, errors.New("is not base64: too much '=' padding")
	}
	std := strings.ContainsAny(unpadded, "+/")
	url := strings.ContainsAny(unpadded, "-_")
	if std && url {
		return nil, errors.New("is not base64: mixes the standard (+/) and URL (-_) alphabets")
	}
	enc := base64.RawStdEncoding
	if url {
		enc = base64.RawURLEncoding
	}
	secret, err := enc.DecodeString(unpadded)
	if err != nil {
		var corrupt base64.CorruptInputError
		if errors.As(err, &corrupt) {
			// The offset only: the decoder's message never quotes input, but
			// say so explicitly rather than rely on it.
			return nil, fmt.Errorf("is not base64: bad data at byte %d (after removing whitespace)", int64(corrupt))
		}
		return nil, errors.New("is not base64")
	}
	if len(secret) < MinSecretBytes {
		return nil, fmt.Errorf("decodes to %d bytes, need at least %d (generate a secret with `kasctl secret`)", len(secret), MinSecretBytes)
	}
	return secret, nil
}

// SameSecret reports whether two decoded secrets are equal, in time that does not depend on
// where they differ.
func SameSecret(a, b []byte) bool {
	return subtle.ConstantTimeCompare(a, b) == 1
}
