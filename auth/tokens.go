package auth

import (
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"regexp"

	"sigs.k8s.io/yaml"
)

// AgentTokenPrefix starts every token made by [NewAgentToken], so a leaked
// token is recognisable (secret scanners, logs). [TokenStore.Lookup] does not
// require it: any string whose hash is in the file is a token.
const AgentTokenPrefix = "qkas_"

// MaxTokensFileBytes is the largest agent tokens file [LoadTokenStore] and
// [ParseTokens] accept: about 40,000 entries.
const MaxTokensFileBytes = 4 << 20

var agentIDPattern = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9._-]{0,62}$`)

// ValidateAgentID reports whether id can name an agent: 1 to 63 characters of
// [a-zA-Z0-9._-], starting with a letter or digit.
func ValidateAgentID(id string) error {
	if !agentIDPattern.MatchString(id) {
		return fmt.Errorf("agent id %q is not valid: want 1 to 63 of [a-zA-Z0-9._-], starting with a letter or digit", id)
	}
	return nil
}

// TokenEntry is one agent in the tokens file.
type TokenEntry struct {
	// ID names the agent (see ValidateAgentID).
	ID string `json:"id"`
	// TokenSHA256 is the hex SHA-256 of the agent's token ([TokenSHA256]).
	TokenSHA256 string `json:"token_sha256"`
}

// TokensFile is the YAML layout of kasd's agent tokens file:
//
//	agents:
//	- id: NAME
//	  token_sha256: HEX
type TokensFile struct {
	Agents []TokenEntry `json:"agents"`
}

// TokenStore answers which agent a token belongs to. It is immutable once
// built and safe for concurrent use; the zero value and nil hold no agents.
type TokenStore struct {
	entries []storeEntry
}

type storeEntry struct {
	id   string
	hash [sha256.Size]byte
}

// emptyTokenHash is the hash of "": an entry with it would let an agent in
// without a token, so ParseTokens refuses it.
var emptyTokenHash = sha256.Sum256(nil)

// ParseTokens parses and checks an agent tokens file. Unknown fields and
// duplicate keys are refused (strict YAML); every id must be valid
// ([ValidateAgentID]) and unique; every token_sha256 must be 64 hex digits
// (either case, normalised to lowercase) and unique. Errors say which entry
// (agents[i] and its id) and what is wrong, without quoting the hash, in case
// someone pasted a token where the hash belongs.
func ParseTokens(data []byte) (*TokenStore, error) {
	if len(data) > MaxTokensFileBytes {
		return nil, fmt.Errorf("agent tokens file larger than %d bytes", MaxTokensFileBytes)
	}
	var f TokensFile
	if err := yaml.UnmarshalStrict(data, &f); err != nil {
		return nil, fmt.Errorf("agent tokens file: %w", err)
	}
	s := &TokenStore{entries: make([]storeEntry, 0, len(f.Agents))}
	byID := make(map[string]int, len(f.Agents))
	byHash := make(map[[sha256.Size]byte]int, len(f.Agents))
	for i, a := range f.Agents {
		if err := ValidateAgentID(a.ID); err != nil {
			return nil, fmt.Errorf("agent tokens file: agents[%d]: %w", i, err)
		}
		if j, dup := byID[a.ID]; dup {
			return nil, fmt.Errorf("agent tokens file: agents[%d]: duplicate id %q (also agents[%d])", i, a.ID, j)
		}
		var h [sha256.Size]byte
		if len(a.TokenSHA256) != hex.EncodedLen(sha256.Size) {
			return nil, fmt.Errorf("agent tokens file: agents[%d] (id %q): token_sha256 must be %d hex digits, has %d characters (use `kasctl agent-token` to make one)",
				i, a.ID, hex.EncodedLen(sha256.Size), len(a.TokenSHA256))
		}
		if _, err := hex.Decode(h[:], []byte(a.TokenSHA256)); err != nil {
			return nil, fmt.Errorf("agent tokens file: agents[%d] (id %q): token_sha256 is not hex", i, a.ID)
		}
		if h == emptyTokenHash {
			return nil, fmt.Errorf("agent tokens file: agents[%d] (id %q): token_sha256 is the hash of the empty token", i, a.ID)
		}
		if j, dup := byHash[h]; dup {
			return nil, fmt.Errorf("agent tokens file: agents[%d] (id %q): same token_sha256 as agents[%d] (id %q); every agent needs its own token",
				i, a.ID, j, f.Agents[j].ID)
		}
		byID[a.ID] = i
		byHash[h] = i
		s.entries = append(s.entries, storeEntry{id: a.ID, hash: h})
	}
	return s, nil
}

// LoadTokenStore reads and parses the agent tokens file at path.
func LoadTokenStore(path string) (*TokenStore, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("agent tokens file: %w", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, MaxTokensFileBytes+1))
	if err != nil {
		return nil, fmt.Errorf("agent tokens file %s: %w", path, err)
	}
	s, err := ParseTokens(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return s, nil
}

// Lookup returns the id of the agent whose token this is. It hashes the token
// and compares the hash with every entry in constant time, without stopping
// at a match, so timing says nothing about which entry (if any) matched. The
// empty token never matches.
func (s *TokenStore) Lookup(token string) (agentID string, ok bool) {
	if s == nil || token == "" {
		return "", false
	}
	return s.lookupHash(sha256.Sum256([]byte(token)))
}

func (s *TokenStore) lookupHash(h [sha256.Size]byte) (agentID string, ok bool) {
	found := -1
	for i := range s.entries {
		if subtle.ConstantTimeCompare(h[:], s.entries[i].hash[:]) == 1 {
			found = i // ids and hashes are unique: at most one match
		}
	}
	if found < 0 {
		return "", false
	}
	return s.entries[found].id, true
}

// Len returns the number of agents in the store.
func (s *TokenStore) Len() int {
	if s == nil {
		return 0
	}
	return len(s.entries)
}

// Entries returns the store's entries in file order, hashes in lowercase hex.
// The caller owns the returned slice.
func (s *TokenStore) Entries() []TokenEntry {
	if s == nil {
		return nil
	}
	out := make([]TokenEntry, len(s.entries))
	for i, e := range s.entries {
		out[i] = TokenEntry{ID: e.id, TokenSHA256: hex.EncodeToString(e.hash[:])}
	}
	return out
}

// NewAgentToken returns a new agent token: AgentTokenPrefix followed by
// unpadded URL-safe base64 of 32 random bytes.
func NewAgentToken() string {
	return AgentTokenPrefix + base64.RawURLEncoding.EncodeToString(randomBytes(32))
}

// TokenSHA256 returns the lowercase hex SHA-256 of token: what the agent
// tokens file stores.
func TokenSHA256(token string) string {
	h := sha256.Sum256([]byte(token))
	return hex.EncodeToString(h[:])
}
