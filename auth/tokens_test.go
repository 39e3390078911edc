package auth

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"sigs.k8s.io/yaml"
)

func TestParseTokens(t *testing.T) {
	tokA, tokB := NewAgentToken(), NewAgentToken()
	hashA, hashB := TokenSHA256(tokA), TokenSHA256(tokB)
	tests := []struct {
		name    string
		yaml    string
		wantLen int
		wantErr string // substring
	}{
		{name: "good", yaml: "agents:\n- id: a\n  token_sha256: " + hashA + "\n- id: b.x_y-1\n  token_sha256: " + hashB + "\n", wantLen: 2},
		{name: "uppercase hash normalised", yaml: "agents:\n- id: a\n  token_sha256: " + strings.ToUpper(hashA) + "\n", wantLen: 1},
		{name: "empty file", yaml: "", wantErr: "no agents: key"},
		{name: "only comments", yaml: "# agents\n\n", wantErr: "no agents: key"},
		{name: "no agents", yaml: "agents: []\n", wantLen: 0},
		{name: "null agents", yaml: "agents:\n", wantLen: 0},
		{name: "flow style", yaml: `{"agents": [{"id": "a", "token_sha256": "` + hashA + `"}]}`, wantLen: 1},
		{name: "two tokens of one agent (a rotation)", yaml: "agents:\n- id: a\n  token_sha256: " + hashA + "\n- id: a\n  token_sha256: " + hashB + "\n", wantLen: 2},
		{name: "third token of one agent", yaml: "agents:\n- id: a\n  token_sha256: " + hashA + "\n- id: a\n  token_sha256: " + hashB + "\n- id: a\n  token_sha256: " + TokenSHA256("c") + "\n", wantErr: `agents[2]: id "a" listed a third time (also agents[0])`},
		{name: "duplicate hash", yaml: "agents:\n- id: a\n  token_sha256: " + hashA + "\n- id: b\n  token_sha256: " + strings.ToUpper(hashA) + "\n", wantErr: `agents[1] (id "b"): same token_sha256 as agents[0] (id "a")`},
		{name: "short hash", yaml: "agents:\n- id: a\n  token_sha256: " + hashA[:63] + "\n", wantErr: `agents[0] (id "a"): token_sha256 must be 64 hex digits, has 63 characters`},
		{name: "token pasted as hash", yaml: "agents:\n- id: a\n  token_sha256: " + tokA + "\n", wantErr: "token_sha256 must be 64 hex digits"},
		{name: "not hex", yaml: "agents:\n- id: a\n  token_sha256: " + strings.Repeat("g", 64) + "\n", wantErr: `agents[0] (id "a"): token_sha256 is not hex`},
		{name: "missing hash", yaml: "agents:\n- id: a\n", wantErr: "has 0 characters"},
		{name: "hash of empty token", yaml: "agents:\n- id: a\n  token_sha256: " + TokenSHA256("") + "\n", wantErr: "hash of the empty token"},
		{name: "bad id", yaml: "agents:\n- id: -a\n  token_sha256: " + hashA + "\n", wantErr: `agents[0]: agent id "-a" is not valid`},
		{name: "missing id", yaml: "agents:\n- token_sha256: " + hashA + "\n", wantErr: `agents[0]: agent id "" is not valid`},
		{name: "id too long", yaml: "agents:\n- id: " + strings.Repeat("a", 64) + "\n  token_sha256: " + hashA + "\n", wantErr: "is not valid"},
		{name: "unknown field in entry", yaml: "agents:\n- id: a\n  token: " + tokA + "\n  token_sha256: " + hashA + "\n", wantErr: `unknown field "token"`},
		{name: "unknown top-level field", yaml: "agent:\n- id: a\n  token_sha256: " + hashA + "\n", wantErr: `unknown field "agent"`},
		{name: "duplicate key", yaml: "agents:\n- id: a\n  id: b\n  token_sha256: " + hashA + "\n", wantErr: "agent tokens file"},
		{name: "not yaml", yaml: "agents: [", wantErr: "agent tokens file"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := ParseTokens([]byte(tt.yaml))
			if tt.wantErr != "" {
				if err == nil {
					t.Fatalf("ParseTokens succeeded, want error containing %q", tt.wantErr)
				}
				if !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error %q, want it to contain %q", err, tt.wantErr)
				}
				if strings.Contains(err.Error(), tokA) {
					t.Fatalf("error %q quotes a token", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseTokens: %v", err)
			}
			if s.Len() != tt.wantLen {
				t.Fatalf("Len() = %d, want %d", s.Len(), tt.wantLen)
			}
			for _, e := range s.Entries() {
				if e.TokenSHA256 != strings.ToLower(e.TokenSHA256) {
					t.Fatalf("entry %q hash not normalised to lowercase", e.ID)
				}
			}
		})
	}
}

func TestTokenStoreLookup(t *testing.T) {
	tokA, tokB, tokC := NewAgentToken(), NewAgentToken(), NewAgentToken()
	file := "agents:\n- id: a\n  token_sha256: " + strings.ToUpper(TokenSHA256(tokA)) + "\n- id: b\n  token_sha256: " + TokenSHA256(tokB) + "\n"
	path := filepath.Join(t.TempDir(), "tokens.yaml")
	if err := os.WriteFile(path, []byte(file), 0o600); err != nil {
		t.Fatal(err)
	}
	s, err := LoadTokenStore(path)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		token  string
		wantID string
		wantOK bool
	}{
		{tokA, "a", true},
		{tokB, "b", true},
		{tokC, "", false},
		{"", "", false},
		{TokenSHA256(tokA), "", false}, // the hash is not the token
		{tokA + "x", "", false},
	}
	for _, tt := range tests {
		id, ok := s.Lookup(tt.token)
		if id != tt.wantID || ok != tt.wantOK {
			t.Errorf("Lookup(%.12s…) = %q, %v; want %q, %v", tt.token, id, ok, tt.wantID, tt.wantOK)
		}
	}
	var nilStore *TokenStore
	if _, ok := nilStore.Lookup(tokA); ok || nilStore.Len() != 0 {
		t.Error("nil store matched or has entries")
	}
}

func TestLoadTokenStoreErrorNamesFile(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.yaml")
	if err := os.WriteFile(bad, []byte("agents:\n- id: a\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, path := range []string{bad, filepath.Join(dir, "missing.yaml")} {
		if _, err := LoadTokenStore(path); err == nil || !strings.Contains(err.Error(), path) {
			t.Errorf("LoadTokenStore(%s) error = %v, want it to name the file", path, err)
		}
	}
}

func TestNewAgentToken(t *testing.T) {
	a, b := NewAgentToken(), NewAgentToken()
	if a == b || !strings.HasPrefix(a, AgentTokenPrefix) || len(a) != len(AgentTokenPrefix)+43 {
		t.Fatalf("NewAgentToken() = %q, %q", a, b)
	}
	// sha256("abc"), a published test vector.
	if got := TokenSHA256("abc"); got != "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad" {
		t.Fatalf("TokenSHA256(abc) = %s", got)
	}
}

func TestValidateAgentID(t *testing.T) {
	for id, ok := range map[string]bool{
		"a": true, "A9": true, "my-agent.prod_1": true, strings.Repeat("x", 63): true,
		"": false, "-a": false, ".a": false, "_a": false, "a b": false, "a/b": false, "é": false,
		strings.Repeat("x", 64): false, "a\n": false,
	} {
		if err := ValidateAgentID(id); (err == nil) != ok {
			t.Errorf("ValidateAgentID(%q) = %v, want ok=%v", id, err, ok)
		}
	}
}

// bigTokensFile is a tokens file of n agents in the layout kasctl writes.
func bigTokensFile(n int, salt string) ([]byte, []string) {
	var b strings.Builder
	b.Grow(n * 110)
	b.WriteString("# agents of the scale test\nagents:\n")
	tokens := make([]string, n)
	for i := range n {
		tokens[i] = salt + strconv.Itoa(i)
		b.WriteString("- id: agent-")
		b.WriteString(strconv.Itoa(i))
		b.WriteString("\n  token_sha256: ")
		b.WriteString(TokenSHA256(tokens[i]))
		b.WriteString("\n")
	}
	return []byte(b.String()), tokens
}

// TestTokenStoreScale: 200,000 agents load in linear time (the canonical layout is scanned,
// not decoded as general YAML, which takes ~15 s), every token is found, and a reload to a
// different file swaps the whole table.
func TestTokenStoreScale(t *testing.T) {
	const n = 200_000
	data, tokens := bigTokensFile(n, "a-")
	if len(data) <= 4<<20 {
		t.Fatalf("file of %d bytes does not pass the old 4 MiB cap", len(data))
	}
	path := filepath.Join(t.TempDir(), "tokens.yaml")
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	s, err := LoadTokenStore(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("loaded %d agents (%d MiB) in %v", s.Len(), len(data)>>20, time.Since(start))
	if _, ok := scanCanonicalTokens(data); !ok {
		t.Fatal("the layout kasctl writes is not scanned by the fast path")
	}
	if s.Len() != n {
		t.Fatalf("Len = %d", s.Len())
	}
	for _, i := range []int{0, 1, n / 2, n - 1} {
		if id, ok := s.Lookup(tokens[i]); !ok || id != "agent-"+strconv.Itoa(i) {
			t.Fatalf("Lookup(token %d) = %q, %v", i, id, ok)
		}
	}
	// Reload to a file with other tokens for the same ids: old tokens stop working at once.
	data2, tokens2 := bigTokensFile(n, "b-")
	if err := os.WriteFile(path, data2, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := s.Reload(); err != nil {
		t.Fatal(err)
	}
	if _, ok := s.Lookup(tokens[7]); ok {
		t.Fatal("a token of the old file still works after Reload")
	}
	if id, ok := s.Lookup(tokens2[n-1]); !ok || id != "agent-"+strconv.Itoa(n-1) {
		t.Fatalf("new token: %q, %v", id, ok)
	}
	if ok, failed := s.ReloadCounts(); ok != 1 || failed != 0 {
		t.Fatalf("ReloadCounts = %d, %d", ok, failed)
	}
}

// TestTokenStoreReloadKeepsOldOnError: a bad, empty or missing file leaves the store as it was, and
// the failure is counted.
func TestTokenStoreReloadKeepsOldOnError(t *testing.T) {
	tok := NewAgentToken()
	path := filepath.Join(t.TempDir(), "tokens.yaml")
	good := "agents:\n- id: a\n  token_sha256: " + TokenSHA256(tok) + "\n"
	if err := os.WriteFile(path, []byte(good), 0o600); err != nil {
		t.Fatal(err)
	}
	s, err := LoadTokenStore(path)
	if err != nil {
		t.Fatal(err)
	}
	// "\n" is an empty file (a file cut before its first line): it disconnected every agent.
	for i, bad := range []string{"agents:\n- id: a\n  token_sha256: nothex\n", "agents: [", "\n", "# emptied\n", ""} {
		if bad == "" {
			if err := os.Remove(path); err != nil {
				t.Fatal(err)
			}
		} else if err := os.WriteFile(path, []byte(bad), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := s.Reload(); err == nil {
			t.Fatalf("bad file %d: Reload succeeded", i)
		}
		if id, ok := s.Lookup(tok); !ok || id != "a" {
			t.Fatalf("bad file %d: the old table is gone: %q, %v", i, id, ok)
		}
		if ok, failed := s.ReloadCounts(); ok != 0 || failed != uint64(i+1) {
			t.Fatalf("ReloadCounts = %d, %d after %d bad files", ok, failed, i+1)
		}
	}
	if err := (&TokenStore{}).Reload(); err == nil {
		t.Fatal("a store without a file reloaded")
	}
}

// TestTokenStoreReloadConcurrent: lookups run while reloads swap tables (the race detector
// checks the swap), each answers from a whole table, and the last file wins.
func TestTokenStoreReloadConcurrent(t *testing.T) {
	path := filepath.Join(t.TempDir(), "tokens.yaml")
	write := func(salt string, n int) {
		data, _ := bigTokensFile(n, salt)
		if err := os.WriteFile(path+".tmp", data, 0o600); err != nil {
			t.Error(err)
		}
		if err := os.Rename(path+".tmp", path); err != nil {
			t.Error(err)
		}
	}
	write("a-", 100)
	s, err := LoadTokenStore(path)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	stop := make(chan struct{})
	wg.Go(func() {
		for {
			select {
			case <-stop:
				return
			default:
			}
			// File "a-" has 100 agents, file "b-" 200: a lookup and Len agree with one of them.
			if id, ok := s.Lookup("b-150"); ok && id != "agent-150" {
				t.Errorf("Lookup(b-150) = %q", id)
				return
			}
			if n := s.Len(); n != 100 && n != 200 {
				t.Errorf("Len = %d", n)
				return
			}
		}
	})
	for i := range 20 {
		if i%2 == 0 {
			write("b-", 200)
		} else {
			write("a-", 100)
		}
		if err := s.Reload(); err != nil {
			t.Error(err)
		}
	}
	close(stop)
	wg.Wait()
	if _, ok := s.Lookup("a-1"); !ok || s.Len() != 100 {
		t.Fatalf("after the last reload: Len %d, a-1 found %v", s.Len(), ok)
	}
}

func TestScanCanonicalTokens(t *testing.T) {
	h := TokenSHA256("x")
	for _, tc := range []struct {
		name string
		yaml string
		ok   bool
	}{
		{"kasctl layout", "agents:\n- id: a\n  token_sha256: " + h + "\n", true},
		{"indented, keys swapped, comments", "# c\nagents:\n  # c\n  - token_sha256: " + h + "\n    id: a\n\n", true},
		{"quoted value", "agents:\n- id: \"a\"\n  token_sha256: " + h + "\n", false},
		{"numeric id", "agents:\n- id: 123\n  token_sha256: " + h + "\n", false},
		{"boolean id", "agents:\n- id: yes\n  token_sha256: " + h + "\n", false},
		{"all-digit hash", "agents:\n- id: a\n  token_sha256: " + strings.Repeat("1", 64) + "\n", false},
		{"float-like hash", "agents:\n- id: a\n  token_sha256: " + strings.Repeat("1", 31) + "e" + strings.Repeat("2", 32) + "\n", false},
		{"trailing comment", "agents:\n- id: a # x\n  token_sha256: " + h + "\n", false},
		{"unknown key", "agents:\n- id: a\n  token: b\n  token_sha256: " + h + "\n", false},
		{"duplicate key", "agents:\n- id: a\n  id: b\n  token_sha256: " + h + "\n", false},
		{"missing key", "agents:\n- id: a\n", false},
		{"crlf", "agents:\r\n- id: a\r\n  token_sha256: " + h + "\r\n", false},
		{"flow", `{"agents": []}`, false},
		{"empty", "", false},
	} {
		agents, ok := scanCanonicalTokens([]byte(tc.yaml))
		if ok != tc.ok {
			t.Errorf("%s: ok = %v, want %v (%v)", tc.name, ok, tc.ok, agents)
		}
		if ok {
			if len(agents) != 1 || agents[0].ID != "a" || agents[0].TokenSHA256 != h {
				t.Errorf("%s: %v", tc.name, agents)
			}
		}
		// Whatever the path, ParseTokens reads the same entries as the YAML decoder.
		checkSameAsYAML(t, []byte(tc.yaml))
	}
}

// checkSameAsYAML fails if the canonical scanner accepts data and reads other entries than
// the YAML decoder does.
func checkSameAsYAML(t *testing.T, data []byte) {
	t.Helper()
	agents, ok := scanCanonicalTokens(data)
	if !ok {
		return
	}
	var f TokensFile
	if err := yaml.UnmarshalStrict(data, &f); err != nil {
		t.Fatalf("scanner accepted what YAML refuses (%v):\n%q", err, data)
	}
	if !slices.Equal(agents, f.Agents) {
		t.Fatalf("scanner read %v, YAML %v:\n%q", agents, f.Agents, data)
	}
}

func FuzzScanCanonicalTokens(f *testing.F) {
	h := TokenSHA256("x")
	f.Add([]byte("agents:\n- id: a\n  token_sha256: " + h + "\n- id: b.c_d-1\n  token_sha256: " + strings.ToUpper(h) + "\n"))
	f.Add([]byte("# c\nagents:\n  - token_sha256: " + h + "\n    id: on1\n"))
	f.Add([]byte("agents:\n- id: e5\n  token_sha256: " + strings.Repeat("1", 63) + "e\n"))
	f.Add([]byte("agents:\n- id: Null\n  token_sha256: 0x" + h[2:] + "\n"))
	f.Add([]byte("agents:\n- id: b\n  token_sha256: 0b" + strings.Repeat("1", 61) + "a\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		checkSameAsYAML(t, data)
	})
}

// TestWatchTokenStore: replacing the file (write a temporary file, rename it over) is noticed
// and reloaded; a bad file is reported and the old table stays.
func TestWatchTokenStore(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "tokens.yaml")
	replace := func(content string) {
		t.Helper()
		if err := os.WriteFile(path+".new", []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(path+".new", path); err != nil {
			t.Fatal(err)
		}
	}
	tokA, tokB := NewAgentToken(), NewAgentToken()
	replace("agents:\n- id: a\n  token_sha256: " + TokenSHA256(tokA) + "\n")
	s, err := LoadTokenStore(path)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	results := make(chan error, 16)
	done := make(chan error)
	go func() { done <- WatchTokenStore(ctx, s, func(err error) { results <- err }) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()
	// Unrelated files in the directory do not trigger a reload.
	if err := os.WriteFile(filepath.Join(dir, "other"), []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	next := func() error {
		t.Helper()
		select {
		case err := <-results:
			return err
		case <-time.After(10 * time.Second):
			t.Fatal("no reload after the file changed")
			return nil
		}
	}
	time.Sleep(50 * time.Millisecond) // the watch is set up before the first change
	replace("agents:\n- id: b\n  token_sha256: " + TokenSHA256(tokB) + "\n")
	if err := next(); err != nil {
		t.Fatal(err)
	}
	if id, ok := s.Lookup(tokB); !ok || id != "b" {
		t.Fatalf("after the change: Lookup(tokB) = %q, %v", id, ok)
	}
	if _, ok := s.Lookup(tokA); ok {
		t.Fatal("the replaced token still works")
	}
	replace("agents: [")
	if err := next(); err == nil {
		t.Fatal("a bad file was not reported")
	}
	if _, ok := s.Lookup(tokB); !ok {
		t.Fatal("a bad file replaced the table")
	}
	if ok, failed := s.ReloadCounts(); ok != 1 || failed != 1 {
		t.Fatalf("ReloadCounts = %d, %d", ok, failed)
	}
}

// TestTokenStoreOnReload: a successful reload calls the hooks once the new file is in use; a
// failed one calls none; a stopped hook is not called again.
func TestTokenStoreOnReload(t *testing.T) {
	tok := NewAgentToken()
	path := filepath.Join(t.TempDir(), "tokens.yaml")
	write := func(s string) {
		if err := os.WriteFile(path, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("agents:\n- id: a\n  token_sha256: " + TokenSHA256(tok) + "\n")
	s, err := LoadTokenStore(path)
	if err != nil {
		t.Fatal(err)
	}
	var calls []bool // whether tok was still valid when the hook ran
	stop := s.OnReload(func() { _, ok := s.Lookup(tok); calls = append(calls, ok) })
	write("agents:\n- id: b\n  token_sha256: " + TokenSHA256(NewAgentToken()) + "\n")
	if err := s.Reload(); err != nil {
		t.Fatal(err)
	}
	write("agents: [")
	if err := s.Reload(); err == nil {
		t.Fatal("a malformed file reloaded")
	}
	if !slices.Equal(calls, []bool{false}) {
		t.Fatalf("hook calls = %v, want one, with the new file in use", calls)
	}
	stop()
	write("agents:\n- id: a\n  token_sha256: " + TokenSHA256(tok) + "\n")
	if err := s.Reload(); err != nil {
		t.Fatal(err)
	}
	if len(calls) != 1 {
		t.Fatalf("a stopped hook was called: %v", calls)
	}
}
