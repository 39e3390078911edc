package quic

import (
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	quicgo "github.com/quic-go/quic-go"
)

// resetKeyInfo labels the stateless reset key derived from a shared secret.
const resetKeyInfo = "qkas stateless reset key v1"

// DeriveStatelessResetKey derives a stateless reset key from secret, a secret that every
// replica of a fleet shares (kasd's peer secret), with HKDF-SHA256 under a label of its own,
// so the key reveals nothing of the secret. Replicas with the same key answer each other's
// connections with a stateless reset (RFC 9000 §10.3: servers behind one load balancer share
// the static key): when a kasd dies and the load balancer sends its agents' packets to
// another replica, that replica resets them at once, where with a key of its own it dropped
// them and the agent waited for its idle timeout.
func DeriveStatelessResetKey(secret []byte) (*quicgo.StatelessResetKey, error) {
	if len(secret) < 32 {
		return nil, fmt.Errorf("stateless reset key: the secret has %d bytes, want at least 32", len(secret))
	}
	b, err := hkdf.Key(sha256.New, secret, nil, resetKeyInfo, len(quicgo.StatelessResetKey{}))
	if err != nil {
		return nil, fmt.Errorf("stateless reset key: %w", err)
	}
	var k quicgo.StatelessResetKey
	copy(k[:], b)
	return &k, nil
}

// LoadOrCreateStatelessResetKey returns the stateless reset key stored at path, creating it
// (32 random bytes, mode 0600) if the file does not exist. The key must stay the same across
// restarts: a restarted kasd then answers its old connections' packets with a stateless
// reset, and agents reconnect at once instead of waiting for their idle timeout.
//
// Creation is atomic (a temporary file is hard-linked into place, falling back to rename), so
// a crash never leaves a short key, and processes racing to create it end up with the same
// key. A file of any other size is an error, never silently replaced.
func LoadOrCreateStatelessResetKey(path string) (*quicgo.StatelessResetKey, error) {
	key, err := readResetKey(path)
	if !errors.Is(err, fs.ErrNotExist) {
		return key, err
	}
	var k quicgo.StatelessResetKey
	if _, err := rand.Read(k[:]); err != nil {
		return nil, fmt.Errorf("stateless reset key: %w", err)
	}
	if err := writeFileAtomic(path, k[:], 0o600, false); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return readResetKey(path) // created concurrently: use theirs
		}
		return nil, fmt.Errorf("stateless reset key: %w", err)
	}
	return &k, nil
}

func readResetKey(path string) (*quicgo.StatelessResetKey, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("stateless reset key: %w", err)
	}
	var k quicgo.StatelessResetKey
	if len(b) != len(k) {
		return nil, fmt.Errorf("stateless reset key %s: file has %d bytes, want exactly %d", path, len(b), len(k))
	}
	copy(k[:], b)
	return &k, nil
}

// writeFileAtomic writes data to a temporary file in path's directory with mode perm, syncs
// it, and moves it to path. With replace false it fails with fs.ErrExist if path exists
// (hard link; rename where links are unsupported); with replace true it renames over path.
func writeFileAtomic(path string, data []byte, perm os.FileMode, replace bool) (err error) {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer func() {
		if err != nil {
			os.Remove(tmp)
		}
	}()
	if err := f.Chmod(perm); err != nil {
		f.Close()
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if !replace {
		lerr := os.Link(tmp, path)
		if lerr == nil {
			os.Remove(tmp)
			return nil
		}
		if errors.Is(lerr, fs.ErrExist) {
			return lerr
		}
		if _, serr := os.Lstat(path); serr == nil {
			return fs.ErrExist
		}
		// The file system may not support hard links: fall back to rename.
	}
	return os.Rename(tmp, path)
}
