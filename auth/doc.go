// Package auth holds qkas's secrets and the checks built on them:
//
//   - secret files (GitLab's format: base64 of at least 32 random bytes, like
//     .gitlab_kas_secret), read by [ReadSecretFile] and made by [NewSecret];
//   - agent tokens for standalone mode: agentd presents a token, kasd keeps only
//     its hex SHA-256 in a YAML file ([ParseTokens], [LoadTokenStore],
//     [TokenStore.Lookup]), so the file on disk cannot be used to impersonate
//     an agent;
//   - the client JWT that callers of kasd's HTTP API present ([Verifier],
//     [Mint], [BearerToken]): HS256, aud "gitlab-kas" (the format of the tokens
//     GitLab mints for kas), iss [DefaultIssuer] unless configured, and an
//     agents claim that lists the agents it reaches. It is signed with its own
//     secret, never GitLab's, so a token GitLab minted is refused; or RS256,
//     ES256 or EdDSA with a key of a JWKS file or URL ([JWKS], a [KeySource])
//     and that JWKS's issuer, under the same claim rules;
//   - a channel-bound proof that kasd replicas exchange ([PeerProof],
//     [VerifyPeerProof]), bound to the fleet id and to the TLS session's
//     exported keying material, so a proof recorded on one connection is
//     useless on any other and one made for a fleet never verifies in another;
//     and the fleet's derived values ([DeriveFleetID], [FleetSecretCheck]).
//
// # Guarantees
//
// No secret, token, token hash from a request, or proof is written to a log or
// put into an error message by this package: errors name the file, the entry
// (agents[i] and its id) or the claim that is wrong, and say why. The package
// does not log at all and starts no goroutines; every function is safe for
// concurrent use, and a [TokenStore] or [Verifier] is read-only once built.
//
// Comparisons that involve secret material are constant time:
// [TokenStore.Lookup] compares the token's SHA-256 against every entry without
// stopping early, and [VerifyPeerProof] uses hmac.Equal. [Verifier.Verify]
// checks the signature before any claim, so an error that names a claim
// ("token expired", "wrong audience") is only ever returned for a token signed
// with the key.
//
// Every failure of [Verifier.Verify] and [BearerToken] is an *api.Error with
// code api.CodeUnauthenticated, a short specific Message and, for Verify, the
// jwt error in Err.
//
// # Limits
//
//   - [MaxTokenBytes] (8 KiB): longest bearer token accepted by [BearerToken]
//     and [Verifier.Verify]; longer ones are refused before parsing.
//   - [Verifier.MaxValidity] (default [DefaultMaxValidity], 1h): a client JWT
//     must carry exp; one whose exp is further than this in the future (plus
//     leeway), or whose exp-iat exceeds it, is refused, so a leaked token is
//     useful for at most that long.
//   - [Verifier.Leeway] (default [DefaultLeeway], 5s): clock skew allowed on
//     exp, nbf and iat.
//   - A client JWT must carry iss, exp and agents ("*" for every agent only
//     alone and only with [Verifier.AllowAnyAgent]); exp, nbf and iat must be
//     JSON numbers; a crit header, impersonate fields other than user and
//     groups, and control characters (C0, DEL, C1) in any string of the header
//     or the claims are refused (docs/security.md).
//   - Only HS256 is accepted, plus RS256, ES256 and EdDSA when the Verifier
//     has Keys: alg "none", HS512, PS256 and every other algorithm are refused
//     before a key is consulted. HS256 is verified only with Key, the others
//     only with a JWKS key of the one type that algorithm uses (RSA >= 2048
//     bits, P-256, Ed25519); symmetric and private JWKs are never used.
//   - A JWKS document is at most [MaxJWKSBytes] (512 KiB) with at most
//     [MaxJWKSKeys] (128) keys, fetched over https (http only to loopback)
//     within [DefaultJWKSTimeout]; an unknown kid re-reads it at most every
//     [DefaultJWKSMinRefresh]; a failed read keeps the last good set. Base64 segments must
//     be canonical (strict decoding), so a token has exactly one spelling.
//   - [MinSecretBytes] (32): shortest secret accepted from a secret file.
//     [Mint], [Verifier.Verify] and [VerifyPeerProof] refuse an empty key (an
//     HMAC with an empty key would be forgeable by anyone) but leave longer
//     minimums to whoever loads the key.
//   - [MaxSecretFileBytes] (64 KiB) and [MaxTokensFileBytes] (256 MiB, about
//     2.4 million agents): largest secret file and agent tokens file read. A
//     [TokenStore] looks a token up in O(1) and reloads atomically
//     ([TokenStore.Reload]): a bad file leaves the previous one in use, and a
//     good one is announced to [TokenStore.OnReload]'s callers (kasd then
//     disconnects agents whose token it no longer lists).
//   - Agent ids match ^[a-zA-Z0-9][a-zA-Z0-9._-]{0,62}$ ([ValidateAgentID]).
package auth
