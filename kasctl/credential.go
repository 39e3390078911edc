package main

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	clientauthv1 "k8s.io/client-go/pkg/apis/clientauthentication/v1"

	"github.com/qkas/qkas/auth"
)

// kasctl credential is a client-go exec credential plugin
// (https://kubernetes.io/docs/reference/access-authn-authz/authentication/#client-go-credential-plugins):
// kubectl runs it (kasctl kubeconfig writes the kubeconfig that says so), reads an
// ExecCredential from its stdout and sends status.token as the bearer token until
// status.expirationTimestamp. The token is a client JWT minted like kasctl jwt's and cached in a
// 0600 file, so that the many kubectl processes of a shell session share one token instead of
// minting one each.
//
// Renewal: the plugin reports as expiration the JWT's exp minus refreshMargin, and a cached token
// is reused only while more than refreshMargin of it is left: client-go asks again before kasd
// would refuse the token, and a request in flight near the end of its validity still carries a
// token kasd accepts.

// execCredentialAPIVersion is the ExecCredential version written; client-go since 1.22 reads it.
const execCredentialAPIVersion = "client.authentication.k8s.io/v1"

// maxRefreshMargin bounds refreshMargin for long TTLs.
const maxRefreshMargin = 5 * time.Minute

// refreshMargin is how long before a token's exp it is no longer handed out: a fifth of the TTL,
// at most maxRefreshMargin (5 minutes of a 1 h token; 1 s of a 5 s test token).
func refreshMargin(ttl time.Duration) time.Duration {
	return min(ttl/5, maxRefreshMargin)
}

// cacheMaxAge is the age after which any file in the cache directory is deleted when a new token
// is written there: tokens are valid for an hour at most, so older files are garbage left by
// rotated secrets or changed flags.
const cacheMaxAge = 24 * time.Hour

// tokenFlags are the flags that say what a client JWT claims, shared by kasctl credential and
// kasctl kubeconfig (which writes them into the kubeconfig for credential). They match kasctl
// jwt's flags.
type tokenFlags struct {
	secretFile, audience, subject, issuer, user string
	groups                                      []string
	ttl                                         time.Duration
}

func (f *tokenFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&f.secretFile, "secret-file", "", "the secret `FILE` kasd verifies client JWTs with (kasd's --api-jwt-secret-file)")
	fs.DurationVar(&f.ttl, "ttl", time.Hour, "how long each token is valid (kasd refuses tokens valid for longer than its maximum, 1h unless configured)")
	fs.StringVar(&f.audience, "audience", auth.DefaultAudience, "the tokens' aud")
	fs.StringVar(&f.subject, "subject", "", "the tokens' sub (who they are for, for kasd's access log)")
	fs.StringVar(&f.issuer, "issuer", auth.DefaultIssuer, "the tokens' iss: kasd's --api-jwt-issuer")
	fs.StringVar(&f.user, "impersonate-user", "", "ask the agent to act as Kubernetes `user`")
	fs.Func("impersonate-group", "with --impersonate-user, a Kubernetes `group` to act as (repeatable)", func(g string) error {
		if g == "" {
			return errors.New("empty group")
		}
		f.groups = append(f.groups, g)
		return nil
	})
}

// check refuses what kasd would refuse whatever the secret; the secret file is checked where
// it is needed.
func (f *tokenFlags) check(fs *flag.FlagSet, stderr io.Writer) error {
	switch {
	case f.ttl <= 0:
		return flagError(fs, "--ttl must be positive")
	case f.audience == "":
		return flagError(fs, "--audience must not be empty")
	case f.issuer == "":
		return flagError(fs, "--issuer must not be empty")
	case len(f.groups) > 0 && f.user == "":
		return flagError(fs, "--impersonate-group needs --impersonate-user")
	}
	if f.ttl > auth.DefaultMaxValidity {
		fmt.Fprintf(stderr, "kasctl: warning: --ttl %v is longer than %v, which kasd refuses unless configured otherwise\n", f.ttl, auth.DefaultMaxValidity)
	}
	return nil
}

// args returns the flags that differ from their defaults, for the kubeconfig's exec args.
func (f *tokenFlags) args() []string {
	var a []string
	if f.secretFile != "" {
		a = append(a, "--secret-file="+f.secretFile)
	}
	if f.ttl != time.Hour {
		a = append(a, "--ttl="+f.ttl.String())
	}
	if f.audience != auth.DefaultAudience {
		a = append(a, "--audience="+f.audience)
	}
	if f.issuer != auth.DefaultIssuer {
		a = append(a, "--issuer="+f.issuer)
	}
	if f.subject != "" {
		a = append(a, "--subject="+f.subject)
	}
	if f.user != "" {
		a = append(a, "--impersonate-user="+f.user)
	}
	for _, g := range f.groups {
		a = append(a, "--impersonate-group="+g)
	}
	return a
}

// claims returns the claims of a token for agents issued at t.
func (f *tokenFlags) claims(agents []string, t time.Time) auth.ClientClaims {
	c := auth.ClientClaims{
		RegisteredClaims: jwt.RegisteredClaims{
			Issuer:    f.issuer,
			Subject:   f.subject,
			Audience:  jwt.ClaimStrings{f.audience},
			IssuedAt:  jwt.NewNumericDate(t),
			ExpiresAt: jwt.NewNumericDate(t.Add(f.ttl)),
		},
		Agents: agents,
	}
	if f.user != "" {
		c.Impersonate = &auth.Impersonation{User: f.user, Groups: f.groups}
	}
	return c
}

// parseAgents checks a comma-separated agents list the way kasd's verifier will.
func parseAgents(fs *flag.FlagSet, list string) ([]string, error) {
	var agents []string
	for _, id := range splitList(list) {
		if id != auth.AnyAgent {
			if err := auth.ValidateAgentID(id); err != nil {
				return nil, fmt.Errorf("--agents: %w", err)
			}
		}
		agents = append(agents, id)
	}
	if len(agents) > 1 && slices.Contains(agents, auth.AnyAgent) {
		return nil, flagError(fs, `--agents: "*" must be alone`)
	}
	return agents, nil
}

// defaultCacheDir is where credential caches tokens unless told otherwise: the user's cache
// directory ($XDG_CACHE_HOME or ~/.cache on Linux), qkas/credentials.
func defaultCacheDir() string {
	d, err := os.UserCacheDir()
	if err != nil {
		return ""
	}
	return filepath.Join(d, "qkas", "credentials")
}

func runCredential(_ context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("credential", "--secret-file FILE --agents IDS [flags]",
		`A client-go exec credential plugin: prints an ExecCredential (`+execCredentialAPIVersion+`)
holding a client JWT for kasd (minted like kasctl jwt's) and when client-go should ask again.
The token is cached in a 0600 file under --cache-dir and reused by later runs until shortly
before it expires (a fifth of --ttl, at most 5m). kasctl kubeconfig writes a kubeconfig that
runs it; kubectl then renews tokens by itself.`, stderr)
	var tf tokenFlags
	tf.register(fs)
	agentsFlag := fs.String("agents", "", "comma-separated agent `ids` the token may reach (required)")
	cacheDir := fs.String("cache-dir", defaultCacheDir(), "the `DIR` tokens are cached in (created 0700); empty: no cache, a new token every run")
	if _, err := parseArgs(fs, args, 0); err != nil {
		return err
	}
	if err := tf.check(fs, stderr); err != nil {
		return err
	}
	switch {
	case tf.secretFile == "":
		return flagError(fs, "--secret-file is required (or KASCTL_SECRET_FILE in the environment)")
	case *agentsFlag == "":
		return flagError(fs, "--agents is required")
	}
	agents, err := parseAgents(fs, *agentsFlag)
	if err != nil {
		return err
	}
	key, err := auth.ReadSecretFile(tf.secretFile)
	if err != nil {
		return err
	}
	c := credentialCache{dir: *cacheDir, key: key, tf: &tf, agents: agents}
	token, exp, err := c.token(stderr)
	if err != nil {
		return err
	}
	cred := clientauthv1.ExecCredential{
		TypeMeta: metav1.TypeMeta{APIVersion: execCredentialAPIVersion, Kind: "ExecCredential"},
		Status: &clientauthv1.ExecCredentialStatus{
			Token:               token,
			ExpirationTimestamp: &metav1.Time{Time: exp.Add(-refreshMargin(tf.ttl))},
		},
	}
	b, err := json.Marshal(cred)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(stdout, "%s\n", b)
	return err
}

// credentialCache is the token cache of one set of claims.
type credentialCache struct {
	dir    string // "" for no cache
	key    []byte
	tf     *tokenFlags
	agents []string
}

// cachedToken is a cache file's content.
type cachedToken struct {
	Token string `json:"token"`
}

// path is the cache file for these claims and this secret: an HMAC of the claims' settings under
// the secret, so that a rotated secret or a change of any flag uses another file, and the name
// tells nothing about the secret.
func (c *credentialCache) path() string {
	h := hmac.New(sha256.New, c.key)
	fmt.Fprintf(h, "v1\x00%s\x00%s\x00%s\x00%s\x00%s\x00%s\x00%s", strings.Join(c.agents, ","), c.tf.issuer,
		c.tf.audience, c.tf.subject, c.tf.ttl, c.tf.user, strings.Join(c.tf.groups, "\x01"))
	return filepath.Join(c.dir, hex.EncodeToString(h.Sum(nil))[:32]+".json")
}

// token returns a cached token with more than refreshMargin left, or mints and caches a new one.
// A cache that cannot be read or written is reported on stderr and the token minted anyway.
func (c *credentialCache) token(stderr io.Writer) (string, time.Time, error) {
	if c.dir != "" {
		if tok, exp, ok := c.load(); ok {
			return tok, exp, nil
		}
	}
	t := now().Truncate(time.Second) // NumericDate has second precision
	token, err := auth.Mint(c.key, c.tf.claims(c.agents, t))
	if err != nil {
		return "", time.Time{}, err
	}
	exp := t.Add(c.tf.ttl)
	if c.dir != "" {
		if err := c.store(token); err != nil {
			fmt.Fprintf(stderr, "kasctl: warning: token not cached: %v\n", err)
		}
	}
	return token, exp, nil
}

// load returns the cached token if the file is private to its owner, the token verifies with
// the secret and the claims asked for, and more than refreshMargin of it is left.
func (c *credentialCache) load() (string, time.Time, bool) {
	p := c.path()
	fi, err := os.Lstat(p)
	if err != nil || !fi.Mode().IsRegular() || fi.Mode().Perm()&0o077 != 0 || fi.Size() > 2*auth.MaxTokenBytes {
		return "", time.Time{}, false // missing, or not ours to trust: minted again and replaced
	}
	b, err := os.ReadFile(p)
	if err != nil {
		return "", time.Time{}, false
	}
	var ct cachedToken
	if json.Unmarshal(b, &ct) != nil {
		return "", time.Time{}, false
	}
	t := now()
	v := auth.Verifier{Key: c.key, Audience: c.tf.audience, Issuer: c.tf.issuer, AllowAnyAgent: true,
		MaxValidity: c.tf.ttl, Leeway: -1, Now: func() time.Time { return t }}
	claims, err := v.Verify(ct.Token)
	if err != nil || !slices.Equal(claims.Agents, c.agents) || claims.Subject != c.tf.subject ||
		!sameImpersonation(claims.Impersonate, c.tf) {
		return "", time.Time{}, false
	}
	exp := claims.ExpiresAt.Time
	if exp.Sub(t) <= refreshMargin(c.tf.ttl) {
		return "", time.Time{}, false
	}
	return ct.Token, exp, true
}

func sameImpersonation(imp *auth.Impersonation, tf *tokenFlags) bool {
	if imp == nil {
		return tf.user == ""
	}
	return imp.User == tf.user && slices.Equal(imp.Groups, tf.groups)
}

// store writes token to the cache file: a new 0600 file renamed over the old one, so that a
// concurrent reader sees the old token or the new one, never half of one.
func (c *credentialCache) store(token string) error {
	if err := os.MkdirAll(c.dir, 0o700); err != nil {
		return err
	}
	c.prune()
	b, err := json.Marshal(cachedToken{Token: token})
	if err != nil {
		return err
	}
	f, err := os.CreateTemp(c.dir, ".token-*") // mode 0600
	if err != nil {
		return err
	}
	_, err = f.Write(append(b, '\n'))
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Chmod(f.Name(), 0o600)
	}
	if err == nil {
		err = os.Rename(f.Name(), c.path())
	}
	if err != nil {
		os.Remove(f.Name())
	}
	return err
}

// prune deletes the cache directory's files older than cacheMaxAge.
func (c *credentialCache) prune() {
	entries, err := os.ReadDir(c.dir)
	if err != nil {
		return
	}
	for _, e := range entries {
		if !e.Type().IsRegular() || !(strings.HasSuffix(e.Name(), ".json") || strings.HasPrefix(e.Name(), ".token-")) {
			continue
		}
		if fi, err := e.Info(); err == nil && now().Sub(fi.ModTime()) > cacheMaxAge {
			os.Remove(filepath.Join(c.dir, e.Name()))
		}
	}
}
