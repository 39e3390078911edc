package main

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"

	"github.com/qkas/qkas/auth"
)

// tokenHeader decodes a JWT's header.
func tokenHeader(t *testing.T, tok string) map[string]any {
	t.Helper()
	h, _, _ := strings.Cut(strings.TrimSpace(tok), ".")
	b, err := base64.RawURLEncoding.DecodeString(h)
	if err != nil {
		t.Fatalf("token %q: %v", tok, err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	return m
}

// parseSet parses `kasctl jwks` output as a JWK set.
func parseSet(t *testing.T, out string) jose.JSONWebKeySet {
	t.Helper()
	var set jose.JSONWebKeySet
	if err := json.Unmarshal([]byte(out), &set); err != nil {
		t.Fatalf("jwks output %q: %v", out, err)
	}
	return set
}

// TestJWKSGenerateAndSign: for each algorithm kasd accepts, `kasctl jwks --generate` writes a
// 0600 private key and prints its public set; `kasctl jwt --key` signs a token whose alg and
// kid are the set's, and whose signature the set's key verifies.
func TestJWKSGenerateAndSign(t *testing.T) {
	for _, alg := range []string{"RS256", "ES256", "EdDSA"} {
		t.Run(alg, func(t *testing.T) {
			key := filepath.Join(t.TempDir(), "client.key")
			out, errOut, code := kasctl(t, "jwks", "--generate", alg, "--key", key)
			if code != 0 {
				t.Fatalf("jwks --generate: exit %d: %s", code, errOut)
			}
			if fi, err := os.Stat(key); err != nil || fi.Mode().Perm() != 0o600 {
				t.Fatalf("key file: %v %v", fi, err)
			}
			set := parseSet(t, out)
			if len(set.Keys) != 1 || set.Keys[0].Algorithm != alg || set.Keys[0].Use != "sig" || !set.Keys[0].IsPublic() || set.Keys[0].KeyID == "" {
				t.Fatalf("set %s", out)
			}
			if _, errOut, code := kasctl(t, "jwks", "--generate", alg, "--key", key); code == 0 || !strings.Contains(errOut, "exists") {
				t.Fatalf("a second --generate overwrote the key: exit %d %s", code, errOut)
			}
			// The set printed again from the private key is the same.
			if again, _, _ := kasctl(t, "jwks", "--key", key); again != out {
				t.Errorf("jwks --key prints %s, --generate printed %s", again, out)
			}
			tok, errOut, code := kasctl(t, "jwt", "--key", key, "--issuer", "https://ci.example.com", "--agents", "a1", "--subject", "ci")
			if code != 0 {
				t.Fatalf("jwt --key: exit %d: %s", code, errOut)
			}
			h := tokenHeader(t, tok)
			if h["alg"] != alg || h["kid"] != set.Keys[0].KeyID {
				t.Fatalf("token header %v, want alg %s kid %s", h, alg, set.Keys[0].KeyID)
			}
			sig, err := jose.ParseSignedCompact(strings.TrimSpace(tok), []jose.SignatureAlgorithm{jose.SignatureAlgorithm(alg)})
			if err != nil {
				t.Fatal(err)
			}
			payload, err := sig.Verify(set.Keys[0].Key)
			if err != nil {
				t.Fatalf("the set's key does not verify the token: %v", err)
			}
			var claims auth.ClientClaims
			if err := json.Unmarshal(payload, &claims); err != nil || claims.Issuer != "https://ci.example.com" || claims.Subject != "ci" ||
				len(claims.Agents) != 1 || claims.Agents[0] != "a1" {
				t.Fatalf("claims %s: %v", payload, err)
			}
		})
	}
}

// TestJWKSKeyFiles: the PEM layouts openssl and other tools write are read; keys kasd would
// not accept are refused with the reason; --kid names the key in both commands; a public key
// makes a set but cannot sign.
func TestJWKSKeyFiles(t *testing.T) {
	dir := t.TempDir()
	write := func(name, typ string, der []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	rsaKey, _ := rsa.GenerateKey(rand.Reader, 2048)
	ecKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	ecDER, _ := x509.MarshalECPrivateKey(ecKey)
	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	p384DER, _ := x509.MarshalECPrivateKey(p384)
	small, _ := rsa.GenerateKey(rand.Reader, 1024)
	pubDER, _ := x509.MarshalPKIXPublicKey(ecKey.Public())
	pkcs1 := write("rsa.pem", "RSA PRIVATE KEY", x509.MarshalPKCS1PrivateKey(rsaKey))
	sec1 := write("ec.pem", "EC PRIVATE KEY", ecDER)
	pub := write("ec.pub", "PUBLIC KEY", pubDER)

	out, errOut, code := kasctl(t, "jwks", "--key", pkcs1, "--key", sec1)
	if code != 0 {
		t.Fatalf("jwks: exit %d %s", code, errOut)
	}
	if set := parseSet(t, out); len(set.Keys) != 2 || set.Keys[0].Algorithm != "RS256" || set.Keys[1].Algorithm != "ES256" {
		t.Fatalf("set %s", out)
	}
	out, _, code = kasctl(t, "jwks", "--key", pub, "--kid", "ci-2026")
	if set := parseSet(t, out); code != 0 || len(set.Keys) != 1 || set.Keys[0].KeyID != "ci-2026" {
		t.Fatalf("jwks of a public key with --kid: exit %d %s", code, out)
	}
	tok, errOut, code := kasctl(t, "jwt", "--key", sec1, "--kid", "ci-2026", "--agents", "a1")
	if code != 0 || tokenHeader(t, tok)["kid"] != "ci-2026" {
		t.Fatalf("jwt --kid: exit %d %s %s", code, tok, errOut)
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"jwt", "--key", pub, "--agents", "a1"}, "a public key cannot sign"},
		{[]string{"jwt", "--key", write("p384.pem", "EC PRIVATE KEY", p384DER), "--agents", "a1"}, "P-256 (ES256) only"},
		{[]string{"jwks", "--key", write("small.pem", "RSA PRIVATE KEY", x509.MarshalPKCS1PrivateKey(small))}, "2048 bits or more"},
		{[]string{"jwks", "--key", write("cert.pem", "CERTIFICATE", []byte{1})}, "is not a key"},
		{[]string{"jwt", "--key", sec1, "--secret-file", pub, "--agents", "a1"}, "exclude each other"},
		{[]string{"jwt", "--kid", "x", "--secret-file", pub, "--agents", "a1"}, "--kid needs --key"},
		{[]string{"jwks", "--key", sec1, "--key", pkcs1, "--kid", "x"}, "give one --key"},
		{[]string{"jwks", "--generate", "HS256", "--key", filepath.Join(dir, "new.pem")}, "unknown algorithm"},
		{[]string{"jwks"}, "--key is required"},
	} {
		if _, errOut, code := kasctl(t, tc.args...); code == 0 || !strings.Contains(errOut, tc.want) {
			t.Errorf("kasctl %v: exit %d, stderr %q; want %q", tc.args, code, errOut, tc.want)
		}
	}
}

// TestJWTKeyAcceptedByKasd runs the JWKS mode end to end with kasctl alone and a real kasd
// binary: `kasctl jwks --generate` makes the key and the set, kasd reads the set with
// --api-jwks-file, and the token `kasctl jwt --key` mints lists the agents; a token signed by
// another key with the same kid, or for another issuer, is refused.
func TestJWTKeyAcceptedByKasd(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and starts kasd")
	}
	dir := t.TempDir()
	kasdBin := filepath.Join(dir, "kasd")
	if bin := os.Getenv("QKAS_BIN_DIR"); bin != "" {
		kasdBin = filepath.Join(bin, "kasd")
	} else if out, err := exec.Command("go", "build", "-o", kasdBin, "github.com/qkas/qkas/kasd/cmd/kasd").CombinedOutput(); err != nil {
		t.Fatalf("go build kasd: %v\n%s", err, out)
	}
	key, other := filepath.Join(dir, "client.key"), filepath.Join(dir, "other.key")
	set, errOut, code := kasctl(t, "jwks", "--generate", "ES256", "--key", key, "--kid", "ci")
	if code != 0 {
		t.Fatalf("jwks: %s", errOut)
	}
	if _, errOut, code := kasctl(t, "jwks", "--generate", "ES256", "--key", other); code != 0 {
		t.Fatalf("jwks: %s", errOut)
	}
	jwksFile := filepath.Join(dir, "jwks.json")
	secret := filepath.Join(dir, "api.secret")
	tokens := filepath.Join(dir, "tokens.yaml")
	for p, content := range map[string]string{jwksFile: set, secret: auth.NewSecret(), tokens: "agents: []\n"} {
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	api, obs := freeTCPAddr(t), freeTCPAddr(t)
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, kasdBin, "--fleet=false", "--data-dir", filepath.Join(dir, "data"),
		"--agent-tokens-file", tokens, "--api-jwt-secret-file", secret,
		"--api-jwks-file", jwksFile, "--api-jwks-issuer", "https://ci.example.com",
		"--agent-listen", "127.0.0.1:0", "--api-listen", api, "--observability-listen", obs,
		"--log-level", "warn", "--log-format", "json", "--shutdown-grace", "1s")
	logFile, err := os.Create(filepath.Join(dir, "kasd.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		cancel()
		_ = cmd.Wait()
		logFile.Close()
		if t.Failed() {
			b, _ := os.ReadFile(logFile.Name())
			t.Logf("kasd log:\n%s", b)
		}
	}()
	client := &http.Client{Timeout: 10 * time.Second}
	defer client.CloseIdleConnections()
	for i := 0; ; i++ {
		resp, err := client.Get("http://" + obs + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
		}
		if i > 600 {
			t.Fatalf("kasd not ready: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	get := func(tok string) (int, string) {
		req, _ := http.NewRequest(http.MethodGet, "http://"+api+"/api/v1/agents", nil)
		req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(tok))
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var b strings.Builder
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			b.WriteString(sc.Text())
		}
		return resp.StatusCode, b.String()
	}
	mint := func(args ...string) string {
		tok, errOut, code := kasctl(t, append([]string{"jwt", "--agents", "a1", "--ttl", "5m"}, args...)...)
		if code != 0 {
			t.Fatalf("kasctl jwt %v: %s", args, errOut)
		}
		return tok
	}
	if code, body := get(mint("--key", key, "--kid", "ci", "--issuer", "https://ci.example.com")); code != http.StatusOK || !strings.Contains(body, `"agents"`) {
		t.Fatalf("kasd refused the minted token: %d %s", code, body)
	}
	for name, tok := range map[string]string{
		"another key, same kid": mint("--key", other, "--kid", "ci", "--issuer", "https://ci.example.com"),
		"another issuer":        mint("--key", key, "--kid", "ci", "--issuer", "https://evil.example.com"),
	} {
		if code, body := get(tok); code != http.StatusUnauthorized {
			t.Errorf("%s: %d %s, want 401", name, code, body)
		}
	}
}

func freeTCPAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return fmt.Sprint(ln.Addr())
}
