// Package certreload keeps TLS certificates, keys and CA bundles current without a restart.
//
// A KeyPair serves a certificate through tls.Config.GetCertificate: every new handshake (an
// agent's QUIC connection, a peer link, an HTTPS client) takes the pair in use at that moment,
// and connections already up keep the one they were set up with, so a rotation drops nothing.
// A CAPool does the same for the roots a client verifies servers with (agentd's --ca-file):
// new dials verify with the current pool.
//
// Reload re-reads the files. A file that does not parse, a key that does not match its
// certificate, an expired certificate or a bundle without a certificate keeps the previous
// material in use; every reload is logged and counted in <namespace>_tls_reloads_total{cert,
// result} (result: ok, unchanged, error), and a KeyPair exports its certificate's NotAfter as
// <namespace>_tls_cert_expiry_timestamp_seconds{cert} (an alert fires 14 days before it,
// manifests/observability).
//
// Watch reloads on SIGHUP and when the files change (internal/filewatch: the directory is
// watched, so renames and Kubernetes Secret updates are seen).
//
// Concurrency: the material in use sits behind an atomic pointer; GetCertificate, Pool and
// Current are safe from any goroutine and never block on a reload. Reload calls are serialised.
// Nothing here starts a goroutine: Watch runs in its caller's.
package certreload
