package main

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/go-jose/go-jose/v4"
	"github.com/golang-jwt/jwt/v5"

	"github.com/qkas/qkas/auth"
)

// Client JWTs signed with a private key, verified by kasd against a JWKS (--api-jwks-file or
// --api-jwks-url): `kasctl jwks` makes the key (--generate) and prints the public set kasd
// reads; `kasctl jwt --key` signs with it. One algorithm per key type, the ones kasd accepts:
// RSA (at least auth.MinRSABits) → RS256, ECDSA P-256 → ES256, Ed25519 → EdDSA. A key's kid is
// its RFC 7638 SHA-256 thumbprint unless --kid names another, so that the token's kid and the
// set's agree without being told twice.

// maxKeyFile bounds what a key file may hold: a PEM key is a few KiB.
const maxKeyFile = 1 << 20

// readKeyFile reads a PEM key: a private key (PKCS#8 "PRIVATE KEY", PKCS#1 "RSA PRIVATE KEY",
// SEC1 "EC PRIVATE KEY") or, for jwks only, a public one ("PUBLIC KEY"). priv is nil for a
// public key.
func readKeyFile(path string) (priv crypto.Signer, pub crypto.PublicKey, err error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxKeyFile+1))
	if err != nil {
		return nil, nil, err
	}
	if len(data) > maxKeyFile {
		return nil, nil, fmt.Errorf("%s: larger than %d bytes: not a PEM key", path, maxKeyFile)
	}
	block, _ := pem.Decode(data)
	if block == nil {
		return nil, nil, fmt.Errorf("%s: no PEM block (want a PEM private key, e.g. from kasctl jwks --generate)", path)
	}
	var key any
	switch block.Type {
	case "PRIVATE KEY":
		key, err = x509.ParsePKCS8PrivateKey(block.Bytes)
	case "RSA PRIVATE KEY":
		key, err = x509.ParsePKCS1PrivateKey(block.Bytes)
	case "EC PRIVATE KEY":
		key, err = x509.ParseECPrivateKey(block.Bytes)
	case "PUBLIC KEY":
		key, err = x509.ParsePKIXPublicKey(block.Bytes)
	default:
		return nil, nil, fmt.Errorf("%s: PEM block %q is not a key (want PRIVATE KEY, RSA PRIVATE KEY, EC PRIVATE KEY or PUBLIC KEY)", path, block.Type)
	}
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", path, err)
	}
	if s, ok := key.(crypto.Signer); ok {
		priv, pub = s, s.Public()
	} else {
		pub = key
	}
	if _, err := signingMethodFor(pub); err != nil {
		return nil, nil, fmt.Errorf("%s: %w", path, err)
	}
	return priv, pub, nil
}

// signingMethodFor is the one algorithm kasd verifies with pub's type.
func signingMethodFor(pub crypto.PublicKey) (jwt.SigningMethod, error) {
	switch k := pub.(type) {
	case *rsa.PublicKey:
		if k.N.BitLen() < auth.MinRSABits {
			return nil, fmt.Errorf("RSA key of %d bits: kasd accepts %d bits or more", k.N.BitLen(), auth.MinRSABits)
		}
		return jwt.SigningMethodRS256, nil
	case *ecdsa.PublicKey:
		if k.Curve != elliptic.P256() {
			return nil, fmt.Errorf("ECDSA key on %s: kasd accepts P-256 (ES256) only", k.Curve.Params().Name)
		}
		return jwt.SigningMethodES256, nil
	case ed25519.PublicKey:
		return jwt.SigningMethodEdDSA, nil
	}
	return nil, fmt.Errorf("%T keys are not supported (RSA, ECDSA P-256 or Ed25519)", pub)
}

// keyThumbprint is pub's RFC 7638 SHA-256 JWK thumbprint, base64url: the default kid.
func keyThumbprint(pub crypto.PublicKey) (string, error) {
	tp, err := (&jose.JSONWebKey{Key: pub}).Thumbprint(crypto.SHA256)
	if err != nil {
		return "", err
	}
	return base64.RawURLEncoding.EncodeToString(tp), nil
}

// publicJWK is pub as kasd's JWKS reads it: kid, use "sig", alg.
func publicJWK(pub crypto.PublicKey, kid string) (json.RawMessage, error) {
	m, err := signingMethodFor(pub)
	if err != nil {
		return nil, err
	}
	return jose.JSONWebKey{Key: pub, KeyID: kid, Use: "sig", Algorithm: m.Alg()}.MarshalJSON()
}

// generateKey makes a private key for alg (RS256: RSA 3072, ES256: P-256, EdDSA: Ed25519).
func generateKey(alg string) (crypto.Signer, error) {
	switch alg {
	case "RS256":
		return rsa.GenerateKey(rand.Reader, 3072)
	case "ES256":
		return ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	case "EdDSA", "Ed25519":
		_, k, err := ed25519.GenerateKey(rand.Reader)
		return k, err
	}
	return nil, fmt.Errorf("unknown algorithm %q (RS256, ES256 or EdDSA)", alg)
}

func runJWKS(_ context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("jwks", "--key FILE [--key FILE...] [flags]",
		`Prints the public JWK set of private (or public) PEM keys: the file for kasd's --api-jwks-file,
or what your --api-jwks-url serves. Each key's kid is its RFC 7638 thumbprint unless --kid is
given, the same kid kasctl jwt --key puts in tokens. To start from nothing:
  kasctl jwks --generate ES256 --key client.key > jwks.json   # client.key: 0600, not overwritten
  kasd ... --api-jwks-file jwks.json --api-jwks-issuer https://ci.example.com
  kasctl jwt --key client.key --issuer https://ci.example.com --agents my-agent`, stderr)
	var keys []string
	fs.Func("key", "a PEM key `FILE` (repeatable: several keys, e.g. during a rotation)", func(v string) error {
		if v == "" {
			return errors.New("empty file name")
		}
		keys = append(keys, v)
		return nil
	})
	kid := fs.String("kid", "", "the key's `kid` (one --key only; default: its RFC 7638 thumbprint)")
	generate := fs.String("generate", "", "first write a new private key to the --key file (which must not exist), for `alg` RS256 (RSA 3072), ES256 (P-256) or EdDSA (Ed25519)")
	if _, err := parseArgs(fs, args, 0); err != nil {
		return err
	}
	switch {
	case len(keys) == 0:
		return flagError(fs, "--key is required")
	case *kid != "" && len(keys) > 1:
		return flagError(fs, "--kid names one key: give one --key")
	case *generate != "" && len(keys) > 1:
		return flagError(fs, "--generate writes one key: give one --key")
	}
	if *generate != "" {
		priv, err := generateKey(*generate)
		if err != nil {
			return flagError(fs, "--generate: "+err.Error())
		}
		der, err := x509.MarshalPKCS8PrivateKey(priv)
		if err != nil {
			return err
		}
		if err := writeNewFile(keys[0], string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}))); err != nil {
			return err
		}
		fmt.Fprintf(stderr, "kasctl: wrote a new %s private key to %s\n", *generate, keys[0])
	}
	set := struct {
		Keys []json.RawMessage `json:"keys"`
	}{}
	for _, path := range keys {
		_, pub, err := readKeyFile(path)
		if err != nil {
			return err
		}
		id := *kid
		if id == "" {
			if id, err = keyThumbprint(pub); err != nil {
				return err
			}
		}
		jwk, err := publicJWK(pub, id)
		if err != nil {
			return err
		}
		set.Keys = append(set.Keys, jwk)
	}
	out, err := json.MarshalIndent(set, "", "  ")
	if err != nil {
		return err
	}
	_, err = fmt.Fprintln(stdout, string(out))
	return err
}

// signWithKey signs claims with the private key in keyFile, with kid (default: the key's
// thumbprint) in the header.
func signWithKey(keyFile, kid string, claims auth.ClientClaims) (string, error) {
	priv, pub, err := readKeyFile(keyFile)
	if err != nil {
		return "", err
	}
	if priv == nil {
		return "", fmt.Errorf("%s: a public key cannot sign: give the private key", keyFile)
	}
	method, err := signingMethodFor(pub)
	if err != nil {
		return "", err
	}
	if kid == "" {
		if kid, err = keyThumbprint(pub); err != nil {
			return "", err
		}
	}
	tok := jwt.NewWithClaims(method, claims)
	tok.Header["kid"] = kid
	return tok.SignedString(priv)
}
