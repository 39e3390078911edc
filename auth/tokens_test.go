package auth

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
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
		{name: "empty file", yaml: "", wantLen: 0},
		{name: "null agents", yaml: "agents:\n", wantLen: 0},
		{name: "flow style", yaml: `{"agents": [{"id": "a", "token_sha256": "` + hashA + `"}]}`, wantLen: 1},
		{name: "duplicate id", yaml: "agents:\n- id: a\n  token_sha256: " + hashA + "\n- id: a\n  token_sha256: " + hashB + "\n", wantErr: `agents[1]: duplicate id "a" (also agents[0])`},
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
