package auth

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"sync/atomic"

	"sigs.k8s.io/yaml"
)

// AgentTokenPrefix starts every token made by [NewAgentToken], so a leaked
// token is recognisable (secret scanners, logs). [TokenStore.Lookup] does not
// require it: any string whose hash is in the file is a token.
const AgentTokenPrefix = "qkas_"

// MaxTokensFileBytes is the largest agent tokens file [LoadTokenStore],
// [TokenStore.Reload] and [ParseTokens] accept: about 2.4 million entries in
// the layout `kasctl agent-token` writes (about 110 bytes each). It guards
// against reading a wrong file (a device, a log) into memory, not against the
// size of a fleet.
const MaxTokensFileBytes = 256 << 20

// ValidateAgentID reports whether id can name an agent: 1 to 63 characters of
// [a-zA-Z0-9._-], starting with a letter or digit.
func ValidateAgentID(id string) error {
	if !validAgentID(id) {
		return fmt.Errorf("agent id %q is not valid: want 1 to 63 of [a-zA-Z0-9._-], starting with a letter or digit", id)
	}
	return nil
}

// validAgentID checks ^[a-zA-Z0-9][a-zA-Z0-9._-]{0,62}$ without a regexp (it runs
// once per entry of a file of hundreds of thousands).
func validAgentID(id string) bool {
	if len(id) == 0 || len(id) > 63 || !isAlnum(id[0]) {
		return false
	}
	for i := 1; i < len(id); i++ {
		if c := id[i]; !isAlnum(c) && c != '.' && c != '_' && c != '-' {
			return false
		}
	}
	return true
}

func isAlnum(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
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

// TokenStore answers which agent a token belongs to. It is safe for
// concurrent use: a lookup reads one immutable table, and [TokenStore.Reload]
// swaps in a new table atomically, so a lookup sees either the old file or the
// new one, never a mix. The zero value and nil hold no agents.
type TokenStore struct {
	tab  atomic.Pointer[tokenTable]
	path string // the file Reload reads; "" for a store made by ParseTokens

	reloadMu     sync.Mutex // serialises Reload
	reloads      atomic.Uint64
	reloadErrors atomic.Uint64

	hookMu  sync.Mutex // guards the fields below
	hooks   map[int]func()
	hookSeq int
}

// tokenTable is one loaded file: entries in file order (for Entries) and an
// index from token hash to entry.
type tokenTable struct {
	entries []storeEntry
	byHash  map[[sha256.Size]byte]int32
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
//
// The layout `kasctl agent-token` writes (one `- id:` line and one
// `token_sha256:` line per entry, plain values, comments and blank lines
// allowed) is read by a line scanner in linear time: 200,000 entries take
// well under a second, where the general YAML decoder takes about 15 s. Any
// other layout (flow style, quotes, other indentation) goes through the YAML
// decoder with the same result.
func ParseTokens(data []byte) (*TokenStore, error) {
	tab, err := parseTokenTable(data)
	if err != nil {
		return nil, err
	}
	s := &TokenStore{}
	s.tab.Store(tab)
	return s, nil
}

func parseTokenTable(data []byte) (*tokenTable, error) {
	if len(data) > MaxTokensFileBytes {
		return nil, fmt.Errorf("agent tokens file larger than %d bytes", MaxTokensFileBytes)
	}
	agents, ok := scanCanonicalTokens(data)
	if !ok {
		var f TokensFile
		if err := yaml.UnmarshalStrict(data, &f); err != nil {
			return nil, fmt.Errorf("agent tokens file: %w", err)
		}
		agents = f.Agents
	}
	if len(agents) == 0 && !hasAgentsKey(data) {
		// An empty file (or one cut before its first line, or only comments) admits no
		// agent: read on a reload, it disconnected every agent. A file that means it says so.
		return nil, ErrNoAgentsKey
	}
	return buildTokenTable(agents)
}

// ErrNoAgentsKey is ParseTokens's error for a file without the agents key: an empty file, or
// one of comments only. Read on a reload, such a file (one cut before its first line, say)
// would disconnect every agent; a file that means to admit no agent says `agents: []`.
var ErrNoAgentsKey = errors.New("agent tokens file has no agents: key (an empty file is refused; write `agents: []` to admit no agent)")

// hasAgentsKey reports whether data, a valid tokens file, has the agents key.
func hasAgentsKey(data []byte) bool {
	var m map[string]any
	if err := yaml.Unmarshal(data, &m); err != nil {
		return false
	}
	_, ok := m["agents"]
	return ok
}

// MaxTokensPerAgent is how many entries of a tokens file may name one agent: two, so that a
// token can be rotated without disconnecting the agent (the new token is added, agentd moves
// to it, the old one is removed: docs/security.md).
const MaxTokensPerAgent = 2

// buildTokenTable checks the entries and indexes them, in one pass.
func buildTokenTable(agents []TokenEntry) (*tokenTable, error) {
	tab := &tokenTable{
		entries: make([]storeEntry, 0, len(agents)),
		byHash:  make(map[[sha256.Size]byte]int32, len(agents)),
	}
	byID := make(map[string]int32, len(agents))
	var second map[string]bool // ids listed twice: a token rotation
	for i, a := range agents {
		if err := ValidateAgentID(a.ID); err != nil {
			return nil, fmt.Errorf("agent tokens file: agents[%d]: %w", i, err)
		}
		if j, dup := byID[a.ID]; dup {
			if second[a.ID] {
				return nil, fmt.Errorf("agent tokens file: agents[%d]: id %q listed a third time (also agents[%d]); an agent has at most %d tokens, the old and the new one of a rotation", i, a.ID, j, MaxTokensPerAgent)
			}
			if second == nil {
				second = map[string]bool{}
			}
			second[a.ID] = true
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
		if j, dup := tab.byHash[h]; dup {
			return nil, fmt.Errorf("agent tokens file: agents[%d] (id %q): same token_sha256 as agents[%d] (id %q); every agent needs its own token",
				i, a.ID, j, agents[j].ID)
		}
		if _, seen := byID[a.ID]; !seen {
			byID[a.ID] = int32(i)
		}
		tab.byHash[h] = int32(i)
		tab.entries = append(tab.entries, storeEntry{id: a.ID, hash: h})
	}
	return tab, nil
}

// printableASCII reports whether data holds only printable ASCII and newlines.
func printableASCII(data []byte) bool {
	for _, c := range data {
		if (c < 0x20 && c != '\n') || c >= 0x7f {
			return false
		}
	}
	return true
}

// scanCanonicalTokens reads the layout kasctl writes:
//
//	# comments and blank lines anywhere
//	agents:
//	- id: NAME              (any indentation I, the same for every entry)
//	  token_sha256: HEX     (indentation I+2; the two keys in either order)
//
// It returns ok=false for anything else (it does not judge: the YAML decoder
// then reads the file and reports what is wrong), including a value that YAML
// would not read as a plain string (quoted, a number, a boolean, a null), so
// that both readers always agree (FuzzScanCanonicalTokens checks it).
func scanCanonicalTokens(data []byte) (agents []TokenEntry, ok bool) {
	// Printable ASCII and newlines only: YAML refuses invalid UTF-8 and control characters
	// anywhere, comments included, and a file kasctl writes has neither (anything else is left
	// to the YAML decoder).
	if len(data) == 0 || !printableASCII(data) {
		return nil, false
	}
	sawKey := false
	indent := -1
	var cur *TokenEntry
	var have int // keys set in cur: 1 id, 2 token_sha256
	for len(data) > 0 {
		var line []byte
		if i := bytes.IndexByte(data, '\n'); i >= 0 {
			line, data = data[:i], data[i+1:]
		} else {
			line, data = data, nil
		}
		trimmed := bytes.TrimLeft(line, " ")
		if len(trimmed) == 0 || trimmed[0] == '#' {
			continue
		}
		if trailingSpace(trimmed) {
			return nil, false
		}
		lead := len(line) - len(trimmed)
		if !sawKey {
			if lead != 0 || string(trimmed) != "agents:" {
				return nil, false
			}
			sawKey = true
			continue
		}
		if trimmed[0] == '-' {
			// A new entry: "- KEY: VALUE".
			if len(trimmed) < 2 || trimmed[1] != ' ' || (indent >= 0 && lead != indent) || (cur != nil && have != 3) {
				return nil, false
			}
			indent = lead
			agents = append(agents, TokenEntry{})
			cur, have = &agents[len(agents)-1], 0
			trimmed = trimmed[2:]
			if len(trimmed) == 0 || trimmed[0] == ' ' {
				return nil, false
			}
		} else if cur == nil || lead != indent+2 {
			return nil, false
		}
		key, value, found := bytes.Cut(trimmed, []byte(": "))
		if !found || !plainString(value) {
			return nil, false
		}
		switch {
		case string(key) == "id" && have&1 == 0:
			cur.ID, have = string(value), have|1
		case string(key) == "token_sha256" && have&2 == 0:
			cur.TokenSHA256, have = string(value), have|2
		default:
			return nil, false
		}
	}
	if len(agents) == 0 || have != 3 {
		return nil, false
	}
	return agents, true
}

func trailingSpace(b []byte) bool { return b[len(b)-1] == ' ' }

// plainString reports whether YAML reads v, unquoted, as the string v: one
// word of [a-zA-Z0-9._-] that is neither a number nor one of YAML 1.1's
// booleans or nulls. A hex hash is a number only when it is all digits with at
// most one e between digits (1234e5678); an id must start with a letter
// (numbers, dates and sexagesimals start with a digit).
func plainString(v []byte) bool {
	if len(v) == 0 {
		return false
	}
	for _, c := range v {
		if !isAlnum(c) && c != '.' && c != '_' && c != '-' {
			return false
		}
	}
	c := v[0]
	if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' {
		if len(v) > 5 {
			return true
		}
		switch strings.ToLower(string(v)) {
		case "y", "yes", "n", "no", "true", "false", "on", "off", "null":
			return false
		}
		return true
	}
	// Starting with a digit: accept only a 64-digit hex word that is not a number.
	if len(v) != hex.EncodedLen(sha256.Size) {
		return false
	}
	if v[0] == '0' && (v[1] == 'b' || v[1] == 'B') && strings.Trim(string(v[2:]), "01") == "" {
		return false // "0b0101…" and "0B0101…" are binary integers to YAML: leave them to it
	}
	digitsOrE, es := true, 0
	for _, c := range v {
		switch {
		case c >= '0' && c <= '9':
		case c == 'e' || c == 'E':
			es++
		case c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F':
			digitsOrE = false
		default:
			return false // '.', '_', '-', other letters: leave it to YAML
		}
	}
	return !(digitsOrE && es <= 1)
}

// LoadTokenStore reads and parses the agent tokens file at path. The store
// remembers path for [TokenStore.Reload].
func LoadTokenStore(path string) (*TokenStore, error) {
	tab, err := loadTokenTable(path)
	if err != nil {
		return nil, err
	}
	s := &TokenStore{path: path}
	s.tab.Store(tab)
	return s, nil
}

func loadTokenTable(path string) (*tokenTable, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("agent tokens file: %w", err)
	}
	defer f.Close()
	// Read into a buffer of the file's size: growing one while reading tens of MiB copies it
	// over and over.
	var buf bytes.Buffer
	if st, err := f.Stat(); err == nil && st.Size() > 0 && st.Size() <= MaxTokensFileBytes {
		buf.Grow(int(st.Size()) + 1)
	}
	_, err = buf.ReadFrom(io.LimitReader(f, MaxTokensFileBytes+1))
	data := buf.Bytes()
	if err != nil {
		return nil, fmt.Errorf("agent tokens file %s: %w", path, err)
	}
	tab, err := parseTokenTable(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return tab, nil
}

// Reload reads the store's file again and, if it is valid, swaps it in
// atomically: lookups in progress finish on the old table, later ones use the
// new. On any error (missing, unreadable or invalid file) the store keeps
// what it had, the error is counted ([TokenStore.ReloadCounts]) and returned.
// A store not made by LoadTokenStore has no file to reload.
func (s *TokenStore) Reload() error {
	if s == nil || s.path == "" {
		return fmt.Errorf("agent tokens file: this store was not loaded from a file")
	}
	s.reloadMu.Lock()
	defer s.reloadMu.Unlock()
	tab, err := loadTokenTable(s.path)
	if err != nil {
		s.reloadErrors.Add(1)
		return err
	}
	s.tab.Store(tab)
	s.reloads.Add(1)
	s.hookMu.Lock()
	hooks := make([]func(), 0, len(s.hooks))
	for _, f := range s.hooks {
		hooks = append(hooks, f)
	}
	s.hookMu.Unlock()
	for _, f := range hooks {
		f()
	}
	return nil
}

// OnReload makes every successful [TokenStore.Reload] call f once the new file is in use
// (lookups from then on see it), in Reload's goroutine before Reload returns, so that
// whoever admitted agents with the previous file can check them again: kasd disconnects an
// agent whose token the new file no longer lists. stop removes f; f is not called after stop
// returns unless a Reload was already calling it.
func (s *TokenStore) OnReload(f func()) (stop func()) {
	s.hookMu.Lock()
	defer s.hookMu.Unlock()
	if s.hooks == nil {
		s.hooks = map[int]func(){}
	}
	s.hookSeq++
	id := s.hookSeq
	s.hooks[id] = f
	return func() {
		s.hookMu.Lock()
		delete(s.hooks, id)
		s.hookMu.Unlock()
	}
}

// Path is the file the store was loaded from ("" for ParseTokens).
func (s *TokenStore) Path() string {
	if s == nil {
		return ""
	}
	return s.path
}

// ReloadCounts returns how many reloads succeeded and how many failed (the
// store kept its previous table).
func (s *TokenStore) ReloadCounts() (ok, failed uint64) {
	if s == nil {
		return 0, 0
	}
	return s.reloads.Load(), s.reloadErrors.Load()
}

func (s *TokenStore) table() *tokenTable {
	if s == nil {
		return nil
	}
	return s.tab.Load()
}

// Lookup returns the id of the agent whose token this is: it hashes the token
// and looks the hash up in a map, O(1) however many agents there are. The
// timing of a map lookup depends only on the SHA-256 of the token, which says
// nothing an attacker can use to make a token whose hash is listed. The empty
// token never matches.
func (s *TokenStore) Lookup(token string) (agentID string, ok bool) {
	if s == nil || token == "" {
		return "", false
	}
	return s.lookupHash(sha256.Sum256([]byte(token)))
}

func (s *TokenStore) lookupHash(h [sha256.Size]byte) (agentID string, ok bool) {
	tab := s.table()
	if tab == nil {
		return "", false
	}
	i, ok := tab.byHash[h]
	if !ok {
		return "", false
	}
	return tab.entries[i].id, true
}

// Len returns the number of agents in the store.
func (s *TokenStore) Len() int {
	if tab := s.table(); tab != nil {
		return len(tab.entries)
	}
	return 0
}

// Entries returns the store's entries in file order, hashes in lowercase hex.
// The caller owns the returned slice.
func (s *TokenStore) Entries() []TokenEntry {
	tab := s.table()
	if tab == nil {
		return nil
	}
	out := make([]TokenEntry, len(tab.entries))
	for i, e := range tab.entries {
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
