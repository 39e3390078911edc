package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"slices"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/qkas/qkas/auth"
)

// now is the clock used for iat and exp; tests replace it.
var now = time.Now

func runJWT(_ context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("jwt", "(--secret-file FILE | --key FILE) --agents IDS [flags]",
		`Prints a client JWT for kasd's HTTP API (iss, aud, agents, iat, exp = now + ttl), HS256 with
kasd's shared secret, or signed with a private key whose public key is in kasd's JWKS
(--api-jwks-file/--api-jwks-url; see kasctl jwks):
  curl -H "Authorization: Bearer $(kasctl jwt --secret-file F --agents my-agent)" ...
  kasctl jwt --key client.key --issuer https://ci.example.com --agents my-agent`, stderr)
	secretFile := fs.String("secret-file", "", "the secret `FILE` kasd verifies client JWTs with (HS256; this or --key is required)")
	keyFile := fs.String("key", "", "sign with the PEM private key in `FILE` instead (RSA: RS256, ECDSA P-256: ES256, Ed25519: EdDSA); kasd verifies it with its JWKS")
	kid := fs.String("kid", "", "with --key, the token's `kid` (default: the key's RFC 7638 thumbprint, the kid kasctl jwks gives it)")
	agents := fs.String("agents", "", "comma-separated agent `ids` the token may reach (required); \"*\" alone: every agent, which kasd accepts only with --api-allow-wildcard")
	ttl := fs.Duration("ttl", time.Hour, "how long the token is valid (kasd refuses tokens valid for longer than its maximum, 1h unless configured)")
	audience := fs.String("audience", auth.DefaultAudience, "the token's aud")
	subject := fs.String("subject", "", "the token's sub (who it is for, for kasd's logs)")
	issuer := fs.String("issuer", auth.DefaultIssuer, "the token's iss: kasd's --api-jwt-issuer")
	user := fs.String("impersonate-user", "", "ask agents to act as Kubernetes `user`")
	var groups []string
	fs.Func("impersonate-group", "with --impersonate-user, a Kubernetes `group` to act as (repeatable)", func(g string) error {
		if g == "" {
			return errors.New("empty group")
		}
		groups = append(groups, g)
		return nil
	})
	if _, err := parseArgs(fs, args, 0); err != nil {
		return err
	}

	var claims auth.ClientClaims
	switch {
	case *secretFile == "" && *keyFile == "":
		return flagError(fs, "--secret-file (HS256) or --key (a JWKS key) is required")
	case *secretFile != "" && *keyFile != "":
		return flagError(fs, "--secret-file and --key exclude each other")
	case *kid != "" && *keyFile == "":
		return flagError(fs, "--kid needs --key")
	case *ttl <= 0:
		return flagError(fs, "--ttl must be positive")
	case *audience == "":
		return flagError(fs, "--audience must not be empty")
	case *issuer == "":
		return flagError(fs, "--issuer must not be empty")
	case len(groups) > 0 && *user == "":
		return flagError(fs, "--impersonate-group needs --impersonate-user")
	case *agents == "":
		return flagError(fs, `--agents is required (the agent ids the token reaches, or "*" for every agent where kasd runs with --api-allow-wildcard)`)
	}
	for _, id := range splitList(*agents) {
		if id != auth.AnyAgent {
			if err := auth.ValidateAgentID(id); err != nil {
				return fmt.Errorf("--agents: %w", err)
			}
		}
		claims.Agents = append(claims.Agents, id)
	}
	if len(claims.Agents) > 1 && slices.Contains(claims.Agents, auth.AnyAgent) {
		return flagError(fs, `--agents: "*" must be alone`)
	}
	if *user != "" {
		claims.Impersonate = &auth.Impersonation{User: *user, Groups: groups}
	}
	if *ttl > auth.DefaultMaxValidity {
		fmt.Fprintf(stderr, "kasctl: warning: --ttl %v is longer than %v, which kasd refuses unless configured otherwise\n", *ttl, auth.DefaultMaxValidity)
	}
	t := now().Truncate(time.Second) // NumericDate has second precision
	claims.RegisteredClaims = jwt.RegisteredClaims{
		Issuer:    *issuer,
		Subject:   *subject,
		Audience:  jwt.ClaimStrings{*audience},
		IssuedAt:  jwt.NewNumericDate(t),
		ExpiresAt: jwt.NewNumericDate(t.Add(*ttl)),
	}
	var token string
	var err error
	if *keyFile != "" {
		token, err = signWithKey(*keyFile, *kid, claims) // jwks.go
	} else {
		var key []byte
		if key, err = auth.ReadSecretFile(*secretFile); err != nil {
			return err
		}
		token, err = auth.Mint(key, claims)
	}
	if err != nil {
		return err
	}
	fmt.Fprintln(stdout, token)
	return nil
}

// flagError reports a bad combination of flags like a parse error: message,
// usage, exit status 2.
func flagError(fs *flag.FlagSet, msg string) error {
	fmt.Fprintf(fs.Output(), "%s: %s\n", fs.Name(), msg)
	fs.Usage()
	return &usageError{msg}
}
