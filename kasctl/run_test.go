package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/qkas/qkas/auth"
	"github.com/qkas/qkas/internal/buildinfo"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// kasctl runs the command line and returns stdout, stderr and the exit status.
func kasctl(t *testing.T, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	var out, errOut bytes.Buffer
	err := run(context.Background(), args, &out, &errOut)
	code = exitCode(err, &errOut)
	return out.String(), errOut.String(), code
}

func mustRun(t *testing.T, args ...string) string {
	t.Helper()
	out, errOut, code := kasctl(t, args...)
	if code != 0 {
		t.Fatalf("kasctl %s: exit %d\nstderr: %s", strings.Join(args, " "), code, errOut)
	}
	return out
}

func TestUsage(t *testing.T) {
	tests := []struct {
		args       []string
		wantCode   int
		wantStderr string
	}{
		{nil, 2, "usage: kasctl <command>"},
		{[]string{"frobnicate"}, 2, `unknown command "frobnicate"`},
		{[]string{"agent-token"}, 2, "want 1 argument(s), got 0"},
		{[]string{"agent-token", "a", "b"}, 2, `unexpected argument "b"`},
		{[]string{"agent-token", "--bogus", "a"}, 2, "flag provided but not defined: -bogus"},
		{[]string{"agent-token", "-bad-name"}, 2, "flag provided but not defined"},
		{[]string{"agent-token", "--", "bad/name"}, 1, `agent id "bad/name" is not valid`},
		{[]string{"jwt"}, 2, "--secret-file (HS256) or --key (a JWKS key) is required"},
		{[]string{"jwt", "--secret-file", "x", "--ttl", "0s"}, 2, "--ttl must be positive"},
		{[]string{"jwt", "--secret-file", "x", "--impersonate-group", "g"}, 2, "--impersonate-group needs --impersonate-user"},
		{[]string{"jwt", "--secret-file", "x"}, 2, "--agents is required"},
		{[]string{"jwt", "--secret-file", "x", "--agents", "a", "--issuer", ""}, 2, "--issuer must not be empty"},
		{[]string{"jwt", "--secret-file", "x", "--agents", "a,*"}, 2, `--agents: "*" must be alone`},
		{[]string{"jwt", "--secret-file", "/nonexistent/secret", "--agents", "a"}, 1, "secret file /nonexistent/secret: file does not exist"},
		{[]string{"secret", "extra"}, 2, `unexpected argument "extra"`},
		{[]string{"version", "--x"}, 2, "flag provided but not defined"},
		{[]string{"jwt", "--secret-file", "x", "--agents", "a", "--ttl", "5"}, 2, `invalid value "5" for flag -ttl: want a duration with a unit`},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			stdout, stderr, code := kasctl(t, tt.args...)
			if code != tt.wantCode || !strings.Contains(stderr, tt.wantStderr) {
				t.Fatalf("exit %d, stderr:\n%s\nwant exit %d and %q", code, stderr, tt.wantCode, tt.wantStderr)
			}
			if stdout != "" {
				t.Fatalf("stdout = %q, want nothing", stdout)
			}
		})
	}
}

// TestHelpOnStdout: help asked for is kasctl's output: stdout, exit status 0 (it went to stderr
// with exit status 2, as a mistake does, so "kasctl jwt -h | less" showed nothing).
func TestHelpOnStdout(t *testing.T) {
	tests := []struct {
		args []string
		want string
	}{
		{[]string{"-h"}, "usage: kasctl <command>"},
		{[]string{"--help"}, "usage: kasctl <command>"},
		{[]string{"help"}, "usage: kasctl <command>"},
		{[]string{"jwt", "-h"}, "usage: kasctl jwt"},
		{[]string{"agent-token", "--help"}, "--tokens-file FILE"},
		{[]string{"jwt", "--ttl", "1h", "-h"}, "-ttl duration"},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			stdout, stderr, code := kasctl(t, tt.args...)
			if code != 0 || !strings.Contains(stdout, tt.want) || stderr != "" {
				t.Fatalf("exit %d, stdout:\n%s\nstderr:\n%s\nwant exit 0 and %q on stdout", code, stdout, stderr, tt.want)
			}
		})
	}
}

// TestVersion: kasctl --version prints what kasd --version and agentd --version print
// (README, Configuration): the version, the VCS revision and the Go version. It printed no
// revision, though the Makefile stamps main.revision into kasctl too.
func TestVersion(t *testing.T) {
	want := buildinfo.Get(version, revision).String("kasctl") + "\n"
	if out := mustRun(t, "version"); out != want || !strings.Contains(out, " (revision ") || !strings.Contains(out, "go1.") {
		t.Fatalf("version: %q, want %q", out, want)
	}
}

func TestSecret(t *testing.T) {
	out := mustRun(t, "secret")
	if raw, err := base64.StdEncoding.DecodeString(strings.TrimSpace(out)); err != nil || len(raw) != 32 {
		t.Fatalf("secret %q: %v", out, err)
	}
	for _, flag := range []string{"--out", "-o"} {
		path := filepath.Join(t.TempDir(), "secret")
		// Even under a permissive umask the file is the owner's only.
		old := syscall.Umask(0)
		mustRun(t, "secret", flag, path)
		syscall.Umask(old)
		key, err := auth.ReadSecretFile(path)
		if err != nil {
			t.Fatal(err)
		}
		if fi, _ := os.Stat(path); fi.Mode().Perm() != 0o600 {
			t.Fatalf("%s: mode %v, want 0600", flag, fi.Mode())
		}
		if _, stderr, code := kasctl(t, "secret", flag, path); code != 1 || !strings.Contains(stderr, "already exists") {
			t.Fatalf("second %s: exit %d, %s", flag, code, stderr)
		}
		if again, err := auth.ReadSecretFile(path); err != nil || string(again) != string(key) {
			t.Fatalf("%s: the refused second run changed the file", flag)
		}
	}
}

// printedEntry returns the YAML list item agent-token printed, as a file.
func printedEntry(t *testing.T, out string) string {
	t.Helper()
	_, entry, ok := strings.Cut(out, "under \"agents:\":\n")
	if !ok {
		t.Fatalf("no entry in output:\n%s", out)
	}
	return "agents:\n" + entry
}

func TestAgentTokenPrinted(t *testing.T) {
	out := mustRun(t, "agent-token", "my-agent.prod")
	lines := strings.Split(out, "\n")
	if len(lines) != 6 || lines[0] != "# agent token for my-agent.prod (shown once; give it to agentd via --token-file):" {
		t.Fatalf("output:\n%s", out)
	}
	token := lines[1]
	if !strings.HasPrefix(token, auth.AgentTokenPrefix) {
		t.Fatalf("token line %q", token)
	}
	store, err := auth.ParseTokens([]byte(printedEntry(t, out)))
	if err != nil {
		t.Fatalf("printed entry does not parse: %v\n%s", err, out)
	}
	if id, ok := store.Lookup(token); !ok || id != "my-agent.prod" {
		t.Fatalf("Lookup(printed token) = %q, %v", id, ok)
	}
}

func TestAgentTokenFiles(t *testing.T) {
	dir := t.TempDir()
	tokens := filepath.Join(dir, "agent-tokens.yaml")
	tokenA, tokenB := filepath.Join(dir, "a.token"), filepath.Join(dir, "b.token")

	// Flags after the name work too.
	out := mustRun(t, "agent-token", "--tokens-file", tokens, "a", "--token-out", tokenA)
	if strings.Contains(out, auth.AgentTokenPrefix) {
		t.Fatalf("token printed despite --token-out:\n%s", out)
	}
	if !strings.Contains(out, "# added to "+tokens+":\n- id: a\n  token_sha256: ") {
		t.Fatalf("output:\n%s", out)
	}
	mustRun(t, "agent-token", "--token-out", tokenB, "--tokens-file", tokens, "b")

	store, err := auth.LoadTokenStore(tokens)
	if err != nil {
		t.Fatal(err)
	}
	for id, path := range map[string]string{"a": tokenA, "b": tokenB} {
		tok, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		if fi, _ := os.Stat(path); fi.Mode().Perm() != 0o600 {
			t.Errorf("%s: mode %v, want 0600", path, fi.Mode())
		}
		if got, ok := store.Lookup(string(tok)); !ok || got != id {
			t.Errorf("Lookup(token of %s) = %q, %v", id, got, ok)
		}
	}
	before, _ := os.ReadFile(tokens)
	if !strings.HasPrefix(string(before), "agents:\n- id: a\n  token_sha256: ") {
		t.Fatalf("tokens file:\n%s", before)
	}

	// A duplicate id is refused and leaves no token file and no change.
	tokenA2 := filepath.Join(dir, "a2.token")
	_, stderr, code := kasctl(t, "agent-token", "--tokens-file", tokens, "--token-out", tokenA2, "a")
	if code != 1 || !strings.Contains(stderr, `already has an agent "a"`) {
		t.Fatalf("duplicate: exit %d, stderr %s", code, stderr)
	}
	if _, err := os.Stat(tokenA2); !os.IsNotExist(err) {
		t.Fatalf("token file written for a refused agent: %v", err)
	}
	// --rotate needs an agent to rotate.
	if _, stderr, code := kasctl(t, "agent-token", "--tokens-file", tokens, "--rotate", "nobody"); code != 1 || !strings.Contains(stderr, `no agent "nobody"`) {
		t.Fatalf("rotate of an unknown agent: exit %d, stderr %s", code, stderr)
	}
	// An existing token file is never replaced, and nothing is appended.
	_, stderr, code = kasctl(t, "agent-token", "--tokens-file", tokens, "--token-out", tokenA, "c")
	if code != 1 || !strings.Contains(stderr, "already exists") {
		t.Fatalf("existing --token-out: exit %d, stderr %s", code, stderr)
	}
	if after, _ := os.ReadFile(tokens); !bytes.Equal(after, before) {
		t.Fatalf("tokens file changed by refused commands:\n%s", after)
	}

	// A rotation: a second token for a, both valid; a third is refused.
	if _, stderr, code := kasctl(t, "agent-token", "--tokens-file", tokens, "--token-out", tokenA2, "--rotate", "a"); code != 0 {
		t.Fatalf("rotate: exit %d, stderr %s", code, stderr)
	}
	data, _ := os.ReadFile(tokens)
	rotated, err := auth.ParseTokens(data)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{tokenA, tokenA2} {
		tok, _ := os.ReadFile(f)
		if id, ok := rotated.Lookup(string(tok)); !ok || id != "a" {
			t.Errorf("after the rotation, the token in %s: %q, %v; want a", f, id, ok)
		}
	}
	if _, stderr, code := kasctl(t, "agent-token", "--tokens-file", tokens, "--rotate", "a"); code != 1 || !strings.Contains(stderr, `already has 2 tokens for agent "a"`) {
		t.Fatalf("third token: exit %d, stderr %s", code, stderr)
	}
}

func TestAgentTokenAppendLayouts(t *testing.T) {
	h := auth.TokenSHA256("x")
	tests := []struct {
		name      string
		old       string // "" with missing: no file
		missing   bool
		wantIDs   []string
		keepsText bool // the old text is a prefix of the new file
		wantErr   string
	}{
		{name: "no file", missing: true, wantIDs: []string{"new"}},
		{name: "empty file", wantIDs: []string{"new"}, keepsText: true},
		{name: "comment only", old: "# kasd agent tokens\n", wantIDs: []string{"new"}, keepsText: true},
		{name: "null agents", old: "agents:\n", wantIDs: []string{"new"}, keepsText: true},
		{name: "comments kept", old: "# tokens\nagents:\n# prod\n- id: a\n  token_sha256: " + h + " # rotated\n", wantIDs: []string{"a", "new"}, keepsText: true},
		{name: "indented items", old: "agents:\n  - id: a\n    token_sha256: " + h + "\n", wantIDs: []string{"a", "new"}, keepsText: true},
		{name: "no trailing newline", old: "agents:\n- id: a\n  token_sha256: " + h, wantIDs: []string{"a", "new"}, keepsText: true},
		{name: "flow style rewritten", old: "agents: []\n", wantIDs: []string{"new"}},
		{name: "json rewritten", old: `{"agents": [{"id": "a", "token_sha256": "` + h + `"}]}`, wantIDs: []string{"a", "new"}},
		{name: "invalid file refused", old: "agents:\n- id: a\n", wantErr: "token_sha256 must be 64 hex digits"},
		{name: "unknown field refused", old: "agent: []\n", wantErr: `unknown field "agent"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "tokens.yaml")
			if !tt.missing {
				if err := os.WriteFile(path, []byte(tt.old), 0o640); err != nil {
					t.Fatal(err)
				}
			}
			_, stderr, code := kasctl(t, "agent-token", "--tokens-file", path, "new")
			if tt.wantErr != "" {
				if code != 1 || !strings.Contains(stderr, tt.wantErr) {
					t.Fatalf("exit %d, stderr %s; want %q", code, stderr, tt.wantErr)
				}
				return
			}
			if code != 0 {
				t.Fatalf("exit %d: %s", code, stderr)
			}
			data, _ := os.ReadFile(path)
			store, err := auth.ParseTokens(data)
			if err != nil {
				t.Fatalf("%v\n%s", err, data)
			}
			var ids []string
			for _, e := range store.Entries() {
				ids = append(ids, e.ID)
			}
			if !slices.Equal(ids, tt.wantIDs) {
				t.Fatalf("ids %v, want %v\n%s", ids, tt.wantIDs, data)
			}
			if tt.keepsText && !strings.HasPrefix(string(data), tt.old) {
				t.Fatalf("old text not kept:\n%s", data)
			}
			fi, _ := os.Stat(path)
			wantMode := os.FileMode(0o640)
			if tt.missing {
				wantMode = 0o644
			}
			if fi.Mode().Perm() != wantMode {
				t.Fatalf("mode %v, want %v", fi.Mode().Perm(), wantMode)
			}
		})
	}
}

func TestJWT(t *testing.T) {
	dir := t.TempDir()
	secretPath := filepath.Join(dir, "secret")
	mustRun(t, "secret", "--out", secretPath)
	key, err := auth.ReadSecretFile(secretPath)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name       string
		args       []string
		verifier   auth.Verifier
		wantAgents []string
		wantImp    *auth.Impersonation
		wantSub    string
	}{
		{name: "defaults", args: []string{"--agents", "a"}, wantAgents: []string{"a"}},
		{name: "agents and subject", args: []string{"--agents", "a, b", "--subject", "ci-job-1"}, wantAgents: []string{"a", "b"}, wantSub: "ci-job-1"},
		{name: "any agent", args: []string{"--agents", "*"}, verifier: auth.Verifier{AllowAnyAgent: true}, wantAgents: []string{"*"}},
		{name: "impersonation", args: []string{"--agents", "a", "--impersonate-user", "alice", "--impersonate-group", "dev", "--impersonate-group", "ops"},
			wantAgents: []string{"a"}, wantImp: &auth.Impersonation{User: "alice", Groups: []string{"dev", "ops"}}},
		{name: "audience and short ttl", args: []string{"--agents", "a", "--audience", "mine", "--ttl", "5m"}, wantAgents: []string{"a"}, verifier: auth.Verifier{Audience: "mine", MaxValidity: 5 * time.Minute}},
		{name: "issuer", args: []string{"--agents", "a", "--issuer", "ci"}, wantAgents: []string{"a"}, verifier: auth.Verifier{Issuer: "ci"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out := mustRun(t, append([]string{"jwt", "--secret-file", secretPath}, tt.args...)...)
			token := strings.TrimSuffix(out, "\n")
			if strings.Count(out, "\n") != 1 || strings.Count(token, ".") != 2 {
				t.Fatalf("output %q: want one token line", out)
			}
			v := tt.verifier
			v.Key = key
			c, err := v.Verify(token)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(c.Agents, tt.wantAgents) || c.Subject != tt.wantSub {
				t.Fatalf("claims %+v", c)
			}
			if (c.Impersonate == nil) != (tt.wantImp == nil) || (c.Impersonate != nil &&
				(c.Impersonate.User != tt.wantImp.User || !slices.Equal(c.Impersonate.Groups, tt.wantImp.Groups))) {
				t.Fatalf("impersonate %+v, want %+v", c.Impersonate, tt.wantImp)
			}
			if c.IssuedAt == nil || c.ExpiresAt == nil {
				t.Fatal("iat or exp missing")
			}
		})
	}
}

func TestJWTTimes(t *testing.T) {
	secretPath := filepath.Join(t.TempDir(), "secret")
	mustRun(t, "secret", "--out", secretPath)
	key, _ := auth.ReadSecretFile(secretPath)
	epoch := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	now = func() time.Time { return epoch }
	defer func() { now = time.Now }()

	token := strings.TrimSpace(mustRun(t, "jwt", "--secret-file", secretPath, "--agents", "a", "--ttl", "10m"))
	v := auth.Verifier{Key: key, Now: func() time.Time { return epoch.Add(9 * time.Minute) }}
	c, err := v.Verify(token)
	if err != nil {
		t.Fatal(err)
	}
	if !c.IssuedAt.Equal(epoch) || !c.ExpiresAt.Equal(epoch.Add(10*time.Minute)) {
		t.Fatalf("iat %v exp %v", c.IssuedAt, c.ExpiresAt)
	}
	v.Now = func() time.Time { return epoch.Add(11 * time.Minute) }
	if _, err := v.Verify(token); err == nil {
		t.Fatal("token valid after its ttl")
	}

	// A ttl over kasd's default maximum is minted with a warning (kasd may
	// be configured to accept it), and the default verifier refuses it.
	out, stderr, code := kasctl(t, "jwt", "--secret-file", secretPath, "--agents", "a", "--ttl", "2h")
	if code != 0 || !strings.Contains(stderr, "warning: --ttl 2h0m0s is longer than 1h0m0s") {
		t.Fatalf("exit %d, stderr %s", code, stderr)
	}
	v.Now = func() time.Time { return epoch }
	if _, err := v.Verify(strings.TrimSpace(out)); err == nil {
		t.Fatal("2h token accepted by the default verifier")
	}
}

func TestJWTBadAgents(t *testing.T) {
	secretPath := filepath.Join(t.TempDir(), "secret")
	mustRun(t, "secret", "--out", secretPath)
	for _, agents := range []string{"a,,b", "bad/id", "a,-b"} {
		if _, stderr, code := kasctl(t, "jwt", "--secret-file", secretPath, "--agents", agents); code != 1 || !strings.Contains(stderr, "--agents: agent id") {
			t.Errorf("--agents %q: exit %d, stderr %s", agents, code, stderr)
		}
	}
}
