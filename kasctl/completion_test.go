package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

func kasctlMain(t *testing.T, env map[string]string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	var out, errOut bytes.Buffer
	lookup := func(k string) (string, bool) { v, ok := env[k]; return v, ok }
	err := runMain(context.Background(), args, lookup, &out, &errOut)
	code = exitCode(err, &errOut)
	return out.String(), errOut.String(), code
}

// TestCommandTable: every command of the usage is in the table with the flags its -h prints.
func TestCommandTable(t *testing.T) {
	cmds := commandTable()
	for _, name := range []string{"agent-token", "jwt", "secret", "version", "completion"} {
		if findCommand(cmds, name) == nil {
			t.Errorf("command %s missing from %v", name, cmds)
		}
	}
	jwt := findCommand(cmds, "jwt")
	var names []string
	for _, f := range jwt.flags {
		names = append(names, f.name)
		if f.usage == "" {
			t.Errorf("jwt --%s: no usage", f.name)
		}
	}
	if got := strings.Join(names, " "); !strings.Contains(got, "secret-file") || !strings.Contains(got, "ttl") {
		t.Fatalf("jwt flags %q", got)
	}
}

// complete runs the bash completion function on a command line (the last word is completed)
// and returns the candidates.
func complete(t *testing.T, script string, words ...string) string {
	t.Helper()
	var quoted []string
	for _, w := range words {
		quoted = append(quoted, "'"+w+"'")
	}
	prog := script + "\nCOMP_WORDS=(" + strings.Join(quoted, " ") + ")\nCOMP_CWORD=" + strconv.Itoa(len(words)-1) +
		"\n_kasctl\necho \"${COMPREPLY[*]}\"\n"
	out, err := exec.Command("bash", "-c", prog).CombinedOutput()
	if err != nil {
		t.Fatalf("bash: %v\n%s", err, out)
	}
	return strings.TrimSpace(string(out))
}

// decodeClaims returns a JWT's claims, unverified.
func decodeClaims(t *testing.T, token string) map[string]any {
	t.Helper()
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		t.Fatalf("not a JWT: %q", token)
	}
	raw, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		t.Fatal(err)
	}
	var claims map[string]any
	if err := json.Unmarshal(raw, &claims); err != nil {
		t.Fatal(err)
	}
	return claims
}

func anyStrings(v any) []string {
	l, _ := v.([]any)
	out := make([]string, 0, len(l))
	for _, e := range l {
		s, _ := e.(string)
		out = append(out, s)
	}
	return out
}

func TestCompletionBash(t *testing.T) {
	if _, err := exec.LookPath("bash"); err != nil {
		t.Skip("no bash")
	}
	script, errOut, code := kasctlMain(t, nil, "completion", "bash")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "jwt.secret"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		words []string
		want  string
	}{
		{[]string{"kasctl", "jw"}, "jwt jwks"},
		{[]string{"kasctl", "jwk"}, "jwks"},
		{[]string{"kasctl", ""}, "agent-token credential jwt jwks kubeconfig secret version completion"},
		{[]string{"kasctl", "jwt", "--secret-"}, "--secret-file"},
		{[]string{"kasctl", "agent-token", "--token"}, "--token-out --tokens-file"},
		{[]string{"kasctl", "jwt", "--secret-file", filepath.Join(dir, "jwt.s")}, filepath.Join(dir, "jwt.secret")},
		{[]string{"kasctl", "jwt", "--ttl", ""}, ""},
		{[]string{"kasctl", "completion", ""}, "bash zsh"},
	} {
		if got := complete(t, script, tc.words...); got != tc.want {
			t.Errorf("%q: completed %q, want %q", tc.words, got, tc.want)
		}
	}
}

func TestCompletionZsh(t *testing.T) {
	script, _, code := kasctlMain(t, nil, "completion", "zsh")
	if code != 0 || !strings.HasPrefix(script, "#compdef kasctl\n") || !strings.Contains(script, `'--secret-file[`) {
		t.Fatalf("exit %d, script:\n%s", code, script)
	}
	if _, err := exec.LookPath("zsh"); err != nil {
		t.Skip("no zsh to check the script's syntax")
	}
	if out, err := exec.Command("zsh", "-n", "-c", script).CombinedOutput(); err != nil {
		t.Fatalf("zsh -n: %v\n%s", err, out)
	}
}

func TestCompletionUsage(t *testing.T) {
	if _, errOut, code := kasctlMain(t, nil, "completion", "fish"); code != 2 || !strings.Contains(errOut, `unknown shell "fish"`) {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	if _, _, code := kasctlMain(t, nil, "completion"); code != 2 {
		t.Fatalf("exit %d without a shell", code)
	}
}

// TestEnvironment: KASCTL_<FLAG> sets a command's flag; the command line wins; a bad value names
// the variable.
func TestEnvironment(t *testing.T) {
	dir := t.TempDir()
	secret := filepath.Join(dir, "jwt.secret")
	mustRun(t, "secret", "-o", secret)
	env := map[string]string{"KASCTL_SECRET_FILE": secret, "KASCTL_AGENTS": "from-env", "KASCTL_SUBJECT": "env"}
	out, errOut, code := kasctlMain(t, env, "jwt", "--subject", "cli")
	if code != 0 {
		t.Fatalf("jwt with KASCTL_SECRET_FILE: exit %d: %s", code, errOut)
	}
	claims := decodeClaims(t, strings.TrimSpace(out))
	if claims["sub"] != "cli" || !strings.Contains(strings.Join(anyStrings(claims["agents"]), ","), "from-env") {
		t.Fatalf("claims %v: want sub from the command line, agents from the environment", claims)
	}
	// A flag given under its one-letter alias is not taken from the environment either.
	out2 := filepath.Join(dir, "s2")
	if _, errOut, code := kasctlMain(t, map[string]string{"KASCTL_OUT": filepath.Join(dir, "env-out")}, "secret", "-o", out2); code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	if _, err := os.Stat(out2); err != nil {
		t.Fatalf("-o lost to KASCTL_OUT: %v", err)
	}
	_, errOut, code = kasctlMain(t, map[string]string{"KASCTL_TTL": "soon"}, "jwt")
	if code != 1 || !strings.Contains(errOut, `environment variable KASCTL_TTL="soon" (--ttl)`) {
		t.Fatalf("exit %d: %s", code, errOut)
	}
}

func TestVersionFlag(t *testing.T) {
	if out, _, code := kasctlMain(t, nil, "--version"); code != 0 || !strings.HasPrefix(out, "kasctl ") {
		t.Fatalf("exit %d: %q", code, out)
	}
}

func TestHelpMentionsMainCommands(t *testing.T) {
	out, _, code := kasctlMain(t, nil, "help")
	if code != 0 || !strings.Contains(out, "usage: kasctl") || !strings.Contains(out, "completion SHELL") || !strings.Contains(out, "KASCTL_<FLAG>") {
		t.Fatalf("exit %d:\n%s", code, out)
	}
	// Without a command it is a mistake: the same usage on stderr, exit status 2.
	_, errOut, code := kasctlMain(t, nil)
	if code != 2 || !strings.Contains(errOut, "completion SHELL") {
		t.Fatalf("no command: exit %d:\n%s", code, errOut)
	}
}
