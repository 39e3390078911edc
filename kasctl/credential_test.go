package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	clientauthv1 "k8s.io/client-go/pkg/apis/clientauthentication/v1"

	"github.com/qkas/qkas/auth"
)

// credential runs kasctl credential at clock t and returns the ExecCredential it printed.
func credential(t *testing.T, at time.Time, args ...string) *clientauthv1.ExecCredential {
	t.Helper()
	now = func() time.Time { return at }
	defer func() { now = time.Now }()
	out := mustRun(t, append([]string{"credential"}, args...)...)
	var cred clientauthv1.ExecCredential
	if err := json.Unmarshal([]byte(out), &cred); err != nil {
		t.Fatalf("credential printed %q: %v", out, err)
	}
	if cred.APIVersion != "client.authentication.k8s.io/v1" || cred.Kind != "ExecCredential" || cred.Status == nil ||
		cred.Status.Token == "" || cred.Status.ExpirationTimestamp == nil {
		t.Fatalf("credential printed %s, want an ExecCredential v1 with token and expirationTimestamp", out)
	}
	return &cred
}

func writeSecret(t *testing.T, dir string) (path string, key []byte) {
	t.Helper()
	path = filepath.Join(dir, "jwt.secret")
	mustRun(t, "secret", "-o", path)
	key, err := auth.ReadSecretFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return path, key
}

// TestCredentialCache: the token satisfies kasd's verifier with its defaults, is cached in a 0600
// file, handed out again until refreshMargin before its exp, then replaced by a new one; a cache
// file another user could have written, or a rotated secret, is not trusted.
func TestCredentialCache(t *testing.T) {
	dir := t.TempDir()
	secret, key := writeSecret(t, dir)
	cache := filepath.Join(dir, "cache")
	args := []string{"--secret-file", secret, "--agents", "alpha", "--ttl", "10m", "--cache-dir", cache,
		"--subject", "me", "--impersonate-user", "alice", "--impersonate-group", "dev"}
	t0 := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)

	c1 := credential(t, t0, args...)
	claims, err := (&auth.Verifier{Key: key, Now: func() time.Time { return t0 }}).Verify(c1.Status.Token)
	if err != nil {
		t.Fatalf("kasd's verifier (defaults) refuses the token: %v", err)
	}
	if claims.Issuer != auth.DefaultIssuer || !claims.AllowsAgent("alpha") || claims.AllowsAgent("beta") || claims.Subject != "me" ||
		claims.Impersonate == nil || claims.Impersonate.User != "alice" || strings.Join(claims.Impersonate.Groups, ",") != "dev" {
		t.Fatalf("claims %+v", claims)
	}
	exp := t0.Add(10 * time.Minute)
	if !claims.ExpiresAt.Time.Equal(exp) {
		t.Fatalf("exp %v, want %v", claims.ExpiresAt.Time, exp)
	}
	// client-go asks again refreshMargin (10m/5 = 2m) before kasd would refuse the token.
	if got, want := c1.Status.ExpirationTimestamp.Time, exp.Add(-2*time.Minute); !got.Equal(want) {
		t.Fatalf("expirationTimestamp %v, want %v", got, want)
	}
	files, _ := filepath.Glob(filepath.Join(cache, "*.json"))
	if len(files) != 1 {
		t.Fatalf("cache files %v, want one", files)
	}
	fi, err := os.Stat(files[0])
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("cache file %v mode %v, want 0600", err, fi.Mode())
	}
	if b, _ := os.ReadFile(files[0]); !strings.Contains(string(b), c1.Status.Token) {
		t.Fatal("cache file does not hold the token")
	}

	// Reused while more than the margin is left, whatever the process.
	if c := credential(t, t0.Add(7*time.Minute+59*time.Second), args...); c.Status.Token != c1.Status.Token {
		t.Fatal("a second run before expiry minted a new token instead of reusing the cached one")
	}
	// Other claims, other cache entry.
	if c := credential(t, t0.Add(time.Minute), append(args, "--agents", "beta")...); c.Status.Token == c1.Status.Token {
		t.Fatal("a token for other agents came from the cache")
	}
	// Renewed once within the margin.
	t2 := t0.Add(8 * time.Minute)
	c2 := credential(t, t2, args...)
	if c2.Status.Token == c1.Status.Token {
		t.Fatal("the token was handed out again within refreshMargin of its expiry")
	}
	if got, want := c2.Status.ExpirationTimestamp.Time, t2.Add(8*time.Minute); !got.Equal(want) {
		t.Fatalf("renewed expirationTimestamp %v, want %v", got, want)
	}
	if c := credential(t, t2.Add(time.Second), args...); c.Status.Token != c2.Status.Token {
		t.Fatal("the renewed token was not cached")
	}

	// A cache file others can write is not trusted (and is replaced by a private one).
	files, _ = filepath.Glob(filepath.Join(cache, "*.json"))
	for _, f := range files {
		if err := os.Chmod(f, 0o666); err != nil {
			t.Fatal(err)
		}
	}
	c3 := credential(t, t2.Add(2*time.Second), args...)
	if c3.Status.Token == c2.Status.Token {
		t.Fatal("token read from a world-writable cache file")
	}
	if c := credential(t, t2.Add(3*time.Second), args...); c.Status.Token != c3.Status.Token {
		t.Fatal("the replacement was not cached")
	}
	// A rotated secret: the cached token would be refused by kasd, so it is not handed out.
	if err := os.Remove(secret); err != nil {
		t.Fatal(err)
	}
	mustRun(t, "secret", "-o", secret)
	newKey, _ := auth.ReadSecretFile(secret)
	c4 := credential(t, t2.Add(4*time.Second), args...)
	if _, err := (&auth.Verifier{Key: newKey, Now: func() time.Time { return t2.Add(4 * time.Second) }}).Verify(c4.Status.Token); err != nil {
		t.Fatalf("after a secret rotation: %v", err)
	}
	// Without a cache: a new token every run, nothing written.
	noCache := filepath.Join(dir, "none")
	a := credential(t, t0, "--secret-file", secret, "--agents", "alpha", "--cache-dir", "")
	b := credential(t, t0.Add(time.Second), "--secret-file", secret, "--agents", "alpha", "--cache-dir", "")
	if a.Status.Token == b.Status.Token {
		t.Fatal("--cache-dir '' reused a token")
	}
	if _, err := os.Stat(noCache); err == nil {
		t.Fatal("cache directory created")
	}
}

// TestCredentialCachedTokenTampered: a cache file whose token does not verify under the secret
// (edited claims) is not handed out.
func TestCredentialCachedTokenTampered(t *testing.T) {
	dir := t.TempDir()
	secret, _ := writeSecret(t, dir)
	cache := filepath.Join(dir, "cache")
	args := []string{"--secret-file", secret, "--agents", "alpha", "--cache-dir", cache}
	t0 := time.Now().Truncate(time.Second)
	c1 := credential(t, t0, args...)
	files, _ := filepath.Glob(filepath.Join(cache, "*.json"))
	if len(files) != 1 {
		t.Fatalf("cache files %v", files)
	}
	parts := strings.Split(c1.Status.Token, ".")
	forged := parts[0] + "." + parts[1] + "x." + parts[2]
	if err := os.WriteFile(files[0], []byte(`{"token":"`+forged+`"}`), 0o600); err != nil {
		t.Fatal(err)
	}
	if c := credential(t, t0.Add(time.Second), args...); c.Status.Token == forged || c.Status.Token == c1.Status.Token {
		t.Fatalf("handed out %q from a tampered cache", c.Status.Token)
	}
}

func TestCredentialUsage(t *testing.T) {
	tests := []struct {
		args []string
		want string
	}{
		{[]string{"credential"}, "--secret-file is required"},
		{[]string{"credential", "--secret-file", "x"}, "--agents is required"},
		{[]string{"credential", "--secret-file", "x", "--agents", "a", "--ttl", "-1s"}, "--ttl must be positive"},
		{[]string{"credential", "--secret-file", "x", "--agents", "a,*"}, `"*" must be alone`},
		{[]string{"credential", "--secret-file", "x", "--agents", "a", "--impersonate-group", "g"}, "needs --impersonate-user"},
		{[]string{"kubeconfig"}, "--agent is required"},
		{[]string{"kubeconfig", "--agent", "a", "--server", "ftp://x"}, "want https://HOST"},
		{[]string{"kubeconfig", "--agent", "a/b"}, "not valid"},
	}
	for _, tt := range tests {
		_, stderr, code := kasctl(t, tt.args...)
		if code == 0 || !strings.Contains(stderr, tt.want) {
			t.Errorf("kasctl %q: exit %d, stderr %q; want %q", tt.args, code, stderr, tt.want)
		}
	}
}
