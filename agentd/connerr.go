package agentd

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"syscall"
	"time"

	quicgo "github.com/quic-go/quic-go"

	"github.com/qkas/qkas/api"
)

// ConnectCode says why a connection to kasd could not be established. It is the error_code
// field of agentd's "connecting to kasd failed" log line and the code label of
// agentd_connect_failures_total. The values are stable: dashboards, alerts and the README's
// table of agentd error codes use them.
type ConnectCode string

// The connect codes, from the network up. README.md ("agentd error codes") explains each and
// what to check.
const (
	// ConnectDNS: a kasd address did not resolve.
	ConnectDNS ConnectCode = "dns_failed"
	// ConnectUnreachable: the network said no (ICMP port/host/network unreachable,
	// connection refused): nothing listens on that UDP port, or a router rejects it.
	ConnectUnreachable ConnectCode = "kasd_unreachable"
	// ConnectNoAnswer: kasd never answered the QUIC handshake: wrong address, UDP blocked by a
	// firewall (QUIC is UDP, not TCP), or kasd down.
	ConnectNoAnswer ConnectCode = "no_answer"
	// ConnectQUICVersion: kasd speaks no QUIC version this agent speaks.
	ConnectQUICVersion ConnectCode = "quic_version_mismatch"
	// ConnectUnknownAuthority: kasd's certificate is not signed by a CA in --ca-file.
	ConnectUnknownAuthority ConnectCode = "tls_unknown_authority"
	// ConnectNameMismatch: kasd's certificate does not name the address dialled (--server-name).
	ConnectNameMismatch ConnectCode = "tls_name_mismatch"
	// ConnectCertInvalid: kasd's certificate is expired, not yet valid or unusable.
	ConnectCertInvalid ConnectCode = "tls_certificate_invalid"
	// ConnectALPN: kasd does not offer the agent protocol on this port (it is another qkas port,
	// or another QUIC server).
	ConnectALPN ConnectCode = "alpn_mismatch"
	// ConnectTLS: another TLS failure (an alert from either side).
	ConnectTLS ConnectCode = "tls_failed"
	// ConnectHandshakeTimeout: QUIC connected, but kasd did not answer the agent's Hello in time.
	ConnectHandshakeTimeout ConnectCode = "handshake_timeout"
	// ConnectTokenRefused: kasd refused the agent token (unknown, revoked, forbidden).
	ConnectTokenRefused ConnectCode = "token_refused"
	// ConnectVersionRefused: kasd does not speak this agent's qkas protocol version, or the
	// reverse.
	ConnectVersionRefused ConnectCode = "version_refused"
	// ConnectOverloaded: kasd shed the connection (admission control); retried after kasd's
	// hint.
	ConnectOverloaded ConnectCode = "kasd_overloaded"
	// ConnectDraining: kasd is draining (a rollout, a shutdown) and takes no new agent; the
	// agent dials another address after its ordinary backoff. Expected during every rollout:
	// not a sign of overload.
	ConnectDraining ConnectCode = "kasd_draining"
	// ConnectRefused: kasd refused the Hello for another reason (its message says which).
	ConnectRefused ConnectCode = "kasd_refused"
	// ConnectLost: the connection ended during the handshake (stateless reset, closed by kasd).
	ConnectLost ConnectCode = "connection_lost"
	// ConnectProxyUnreachable: the HTTP proxy (HTTPS_PROXY, --proxy-url) of the TCP transport
	// could not be reached or spoke no HTTP.
	ConnectProxyUnreachable ConnectCode = "proxy_unreachable"
	// ConnectProxyAuth: the proxy wants credentials (HTTP 407): put user:password in the proxy
	// URL.
	ConnectProxyAuth ConnectCode = "proxy_auth_required"
	// ConnectProxyRefused: the proxy refused to CONNECT to kasd (403, 5xx: an ACL, a CONNECT
	// port restriction, or kasd unreachable from the proxy).
	ConnectProxyRefused ConnectCode = "proxy_refused"
	// ConnectOther: anything else; the log line carries the error.
	ConnectOther ConnectCode = "other"
)

func (c ConnectCode) String() string { return string(c) }

// connectFailure is a classified connect error: its code and one sentence saying what happened
// and what to check, for the log line.
type connectFailure struct {
	Code ConnectCode
	Hint string
}

// helloError marks an error of the qkas Hello/Welcome exchange, after QUIC and TLS succeeded:
// a timeout there is kasd not answering the Hello, not the network dropping UDP.
type helloError struct{ err error }

func (e *helloError) Error() string { return "hello: " + e.err.Error() }
func (e *helloError) Unwrap() error { return e.err }

// classifyConnect is the one place that decides why a connect attempt failed (STYLE.md §11). It
// matches on types and codes from crypto/x509, crypto/tls, net, syscall, quic-go and package
// api, never on error strings. Order matters: a kasd refusal and a certificate problem are more
// specific than the QUIC close or timeout that carries them.
func classifyConnect(err error) connectFailure {
	inHello := false
	if _, ok := errors.AsType[*helloError](err); ok {
		inHello = true
	}
	// kasd's own refusals (Error frame or close reason, see refusalFromClose).
	if ae, ok := errors.AsType[*api.Error](err); ok {
		switch ae.Code {
		case api.CodeUnauthenticated, api.CodeForbidden:
			return connectFailure{ConnectTokenRefused, "kasd refused the agent token (" + ae.Message + "): check --token-file and kasd's tokens file; retrying slowly"}
		case api.CodeUnsupportedVersion:
			return connectFailure{ConnectVersionRefused, "kasd and this agent speak different qkas protocol versions (" + ae.Message + "): upgrade the older one; retrying slowly"}
		case api.CodeOverloaded:
			return connectFailure{ConnectOverloaded, "kasd shed the connection (" + ae.Message + "); retrying after its hint"}
		case api.CodeShuttingDown:
			return connectFailure{ConnectDraining, "kasd is draining (" + ae.Message + "): a rollout or shutdown; trying another address"}
		default:
			return connectFailure{ConnectRefused, "kasd refused the connection: " + ae.Code.String() + ": " + ae.Message}
		}
	}
	if pe, ok := errors.AsType[*proxyError](err); ok {
		switch pe.code {
		case ConnectProxyAuth:
			return connectFailure{ConnectProxyAuth, "the HTTP proxy wants credentials: give them as user:password@ in HTTPS_PROXY or --proxy-url"}
		case ConnectProxyRefused:
			return connectFailure{ConnectProxyRefused, "the HTTP proxy refused to CONNECT to kasd: check its ACLs, that it allows CONNECT to kasd's port, and that it reaches kasd (or set NO_PROXY)"}
		default:
			return connectFailure{ConnectProxyUnreachable, "the HTTP proxy of the TCP transport cannot be reached: check HTTPS_PROXY / --proxy-url"}
		}
	}
	if errors.Is(err, api.ErrUnsupportedVersion) {
		return connectFailure{ConnectVersionRefused, "kasd speaks another qkas protocol version: upgrade the older side"}
	}
	// Certificates: tls.CertificateVerificationError carries what kasd presented.
	if f, ok := classifyCertificate(err); ok {
		return f
	}
	if te, ok := errors.AsType[*quicgo.TransportError](err); ok && te.ErrorCode.IsCryptoError() {
		alert := tls.AlertError(te.ErrorCode - 0x100)
		if alert == tls.AlertError(120) { // no_application_protocol (RFC 8446 §6)
			return connectFailure{ConnectALPN, "kasd does not offer the agent protocol " + api.ALPNAgent + " at this address: check that --kas-address is kasd's agent port, not its API or peer port"}
		}
		side := "agent"
		if te.Remote {
			side = "kasd"
		}
		return connectFailure{ConnectTLS, fmt.Sprintf("TLS handshake failed: the %s sent alert %q", side, alert.Error())}
	}
	if _, ok := errors.AsType[*quicgo.VersionNegotiationError](err); ok {
		return connectFailure{ConnectQUICVersion, "kasd speaks no QUIC version this agent speaks: upgrade the older side"}
	}
	if _, ok := errors.AsType[*net.DNSError](err); ok {
		return connectFailure{ConnectDNS, "a kasd address did not resolve: check the DNS name in --kas-address and the resolver"}
	}
	if errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.EHOSTUNREACH) || errors.Is(err, syscall.ENETUNREACH) {
		return connectFailure{ConnectUnreachable, "the network reports kasd unreachable (ICMP): check --kas-address, that kasd listens on that UDP port, and routes"}
	}
	_, handshakeTimeout := errors.AsType[*quicgo.HandshakeTimeoutError](err)
	_, idleTimeout := errors.AsType[*quicgo.IdleTimeoutError](err)
	timeout := handshakeTimeout || idleTimeout || errors.Is(err, context.DeadlineExceeded) || errors.Is(err, os.ErrDeadlineExceeded)
	switch {
	case timeout && inHello:
		return connectFailure{ConnectHandshakeTimeout, "QUIC connected but kasd did not answer the Hello in time: kasd is overloaded or stuck, or a middlebox drops larger UDP packets"}
	case timeout:
		return connectFailure{ConnectNoAnswer, "no answer from kasd over UDP: check the address (and what DNS resolves it to), that every firewall on the way lets that UDP port through (QUIC is UDP, not TCP), and that kasd runs"}
	}
	if _, ok := errors.AsType[*quicgo.StatelessResetError](err); ok {
		return connectFailure{ConnectLost, "kasd reset the connection during the handshake (it restarted?)"}
	}
	if _, ok := errors.AsType[*quicgo.ApplicationError](err); ok {
		return connectFailure{ConnectLost, "kasd closed the connection during the handshake"}
	}
	if _, ok := errors.AsType[*quicgo.TransportError](err); ok {
		return connectFailure{ConnectLost, "the QUIC connection failed during the handshake"}
	}
	return connectFailure{ConnectOther, ""}
}

// classifyCertificate reads why crypto/tls rejected kasd's certificate, naming what kasd
// presented (its names and its issuer), so that an operator sees which certificate and which CA.
func classifyCertificate(err error) (connectFailure, bool) {
	var presented *x509.Certificate
	if cv, ok := errors.AsType[*tls.CertificateVerificationError](err); ok && len(cv.UnverifiedCertificates) > 0 {
		presented = cv.UnverifiedCertificates[0]
	}
	if ua, ok := errors.AsType[x509.UnknownAuthorityError](err); ok {
		if presented == nil {
			presented = ua.Cert
		}
		return connectFailure{ConnectUnknownAuthority, "kasd's certificate " + describeCert(presented) + " is not signed by a CA in --ca-file: give --ca-file the CA that issued kasd's certificate (or fix kasd's --tls-cert-file)"}, true
	}
	if he, ok := errors.AsType[x509.HostnameError](err); ok {
		if presented == nil {
			presented = he.Certificate
		}
		return connectFailure{ConnectNameMismatch, "kasd's certificate " + describeCert(presented) + " is not valid for " + he.Host + ": set --server-name to a name it holds, or reissue it"}, true
	}
	if ci, ok := errors.AsType[x509.CertificateInvalidError](err); ok {
		if presented == nil {
			presented = ci.Cert
		}
		return connectFailure{ConnectCertInvalid, "kasd's certificate " + describeCert(presented) + " is invalid: " + ci.Error()}, true
	}
	return connectFailure{}, false
}

// describeCert names a certificate by its subject names and issuer.
func describeCert(c *x509.Certificate) string {
	if c == nil {
		return "(none presented)"
	}
	names := c.DNSNames
	for _, ip := range c.IPAddresses {
		names = append(names, ip.String())
	}
	if len(names) == 0 && c.Subject.CommonName != "" {
		names = []string{c.Subject.CommonName}
	}
	return fmt.Sprintf("for [%s] issued by %q", strings.Join(names, " "), c.Issuer.String())
}

// connectFailed logs a failed connect attempt at warn, once per attempt, with its code and what
// to check, and counts it (agentd_connect_failures_total{code}).
func (a *Agent) connectFailed(err error, tgt target, attempt int, retryIn time.Duration) {
	f := classifyConnect(err)
	a.m.connectFailures.WithLabelValues(f.Code.String()).Inc()
	a.log.Warn().Err(err).Str("error_code", f.Code.String()).Str("hint", f.Hint).Str("kas_address", tgt.String()).
		Str("server_name", tgt.serverName).Int("attempt", attempt).Dur("retry_in", retryIn).Msg("connecting to kasd failed")
}
