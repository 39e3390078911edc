package quic

import (
	"crypto/hkdf"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"sync"
)

// TLS session resumption for agent connections (docs/scale.md "TLS session resumption").
//
// A TLS 1.3 server hands the client a session ticket after the handshake; a client that keeps
// it can resume: the next handshake skips the server's certificate and signature (and the
// client's verification of the certificate chain) and still runs a fresh key exchange
// (crypto/tls only offers psk_dhe_ke), so forward secrecy is kept. After a kasd restart or a
// failover, thousands of agents reconnect at once, and the certificate work is about a third
// of the TLS CPU of kasd's side of a handshake and two thirds of the agent's.
//
// For a ticket to outlive the process that issued it, and to be accepted by every replica
// serving the same certificate, the ticket keys are derived from the certificate's private key
// (HKDF-SHA256, a label of qkas's own) instead of crypto/tls's random per-process keys. A
// certificate with a new key invalidates every ticket issued under the old one: the next
// handshake is a full one. crypto/tls enforces the tickets' lifetime (at most 7 days).

// ticketKeyInfo is the HKDF info label of the session ticket keys; change it to invalidate
// every ticket issued so far.
const ticketKeyInfo = "qkas agent session tickets v1"

// SessionTickets derives session ticket keys from the private key of the certificate a server
// presents, so that tickets survive restarts and are shared by replicas with the same key.
// Enable sets it on a server tls.Config.
type SessionTickets struct {
	current func() *tls.Certificate
	purpose string // mixed into the key: tickets of one listener do not resume at another

	mu   sync.Mutex
	last *tls.Certificate // the certificate keys was derived from
	keys *tls.Config      // carries the derived ticket keys; nil when last's key is not exportable
}

// NewSessionTickets returns ticket keys that follow current, the certificate served now
// (a reloading key pair's Current, for example). purpose (an ALPN protocol, say) is mixed into
// the key, so that listeners serving one certificate for different purposes do not accept each
// other's tickets.
func NewSessionTickets(current func() *tls.Certificate, purpose string) *SessionTickets {
	return &SessionTickets{current: current, purpose: purpose}
}

// Enable makes conf issue and accept tickets under the derived keys. A private key that cannot
// be exported (a crypto.Signer backed by hardware) leaves crypto/tls's own keys in use: tickets
// then resume only with this process.
func (s *SessionTickets) Enable(conf *tls.Config) {
	conf.SessionTicketsDisabled = false
	conf.WrapSession = func(cs tls.ConnectionState, ss *tls.SessionState) ([]byte, error) {
		if k := s.keyConfig(); k != nil {
			return k.EncryptTicket(cs, ss)
		}
		return conf.EncryptTicket(cs, ss)
	}
	conf.UnwrapSession = func(identity []byte, cs tls.ConnectionState) (*tls.SessionState, error) {
		// A ticket that does not decrypt (another key, tampered, garbage) is no error: the
		// handshake goes on as a full one.
		if k := s.keyConfig(); k != nil {
			return k.DecryptTicket(identity, cs)
		}
		return conf.DecryptTicket(identity, cs)
	}
}

// keyConfig returns a tls.Config holding the keys derived from the current certificate's
// private key, nil if there is no certificate or its key cannot be exported.
func (s *SessionTickets) keyConfig() *tls.Config {
	cert := s.current()
	s.mu.Lock()
	defer s.mu.Unlock()
	if cert != s.last {
		s.last, s.keys = cert, nil
		if key, ok := TicketKey(cert, s.purpose); ok {
			s.keys = &tls.Config{}
			s.keys.SetSessionTicketKeys([][32]byte{key})
		}
	}
	return s.keys
}

// TicketKey derives the session ticket key of cert and purpose from cert's private key; ok is
// false if cert is nil or its key cannot be exported.
func TicketKey(cert *tls.Certificate, purpose string) (key [32]byte, ok bool) {
	if cert == nil || cert.PrivateKey == nil {
		return key, false
	}
	der, err := x509.MarshalPKCS8PrivateKey(cert.PrivateKey)
	if err != nil {
		return key, false
	}
	b, err := hkdf.Key(sha256.New, der, nil, ticketKeyInfo+" "+purpose, len(key))
	if err != nil {
		return key, false
	}
	copy(key[:], b)
	return key, true
}

// NewClientSessionCache returns a client session cache of up to size tickets (one per server
// name) that keeps a ticket when a handshake using it fails. crypto/tls drops the ticket of a
// failed resumption attempt, and in a restart storm most failures are kasd refusing or being
// too slow (CONNECTION_REFUSED, a handshake timeout), not the ticket: the next attempt would
// then be a full handshake, when the storm most needs cheap ones. A ticket kasd no longer
// accepts costs nothing: the handshake goes on as a full one and brings a new ticket.
func NewClientSessionCache(size int) tls.ClientSessionCache {
	return keepTickets{tls.NewLRUClientSessionCache(size)}
}

type keepTickets struct{ tls.ClientSessionCache }

// Put stores cs; a nil cs (crypto/tls forgetting a ticket after a failed handshake, or one
// whose certificate has expired, which crypto/tls checks again at every use) is ignored.
func (k keepTickets) Put(key string, cs *tls.ClientSessionState) {
	if cs != nil {
		k.ClientSessionCache.Put(key, cs)
	}
}
