package kasd

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	quicgo "github.com/quic-go/quic-go"

	"github.com/qkas/qkas/api"
	"github.com/qkas/qkas/auth"
	"github.com/qkas/qkas/quic"
	"github.com/qkas/qkas/registry"
)

// A fleet is the kasd replicas that share a fleet id and a peer secret. The fleet id names
// the registry's keys (registry.Config.FleetID), so that replicas of different fleets on one
// etcd never see each other's agents; it travels in peer_hello and is bound into the peer
// proof, so that a replica of another fleet, or one given another secret, is refused at the
// handshake by name instead of failing every forwarded request with a bare 502.

var (
	// ErrFleetMismatch: the peer belongs to another fleet (another --fleet-id, or, without
	// one, another peer secret), or sent no fleet id (a kasd older than fleet ids).
	ErrFleetMismatch = errors.New("peer is in another fleet")
	// ErrPeerSecretMismatch: the peer is in this fleet but was given another peer secret.
	ErrPeerSecretMismatch = errors.New("peer secret differs")
)

// Reasons a peer handshake is refused: the reason label of kasd_peer_refusals_total.
const (
	refusedFleetMismatch  = "fleet_mismatch"
	refusedNoFleetID      = "no_fleet_id"
	refusedSecretMismatch = "secret_mismatch"
	refusedVersion        = "unsupported_version"
	refusedWrongInstance  = "wrong_instance"
	refusedByPeer         = "refused_by_peer" // dial side: the peer answered with an error
	refusedProtocol       = "protocol"        // no hello, a malformed one, a timeout
)

// newPeerRefusals registers kasd_peer_refusals_total on reg.
func newPeerRefusals(reg prometheus.Registerer) (*prometheus.CounterVec, error) {
	c := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "kasd_peer_refusals_total",
		Help: "Peer handshakes refused, by side (accept: a peer dialled this kasd; dial: this kasd dialled a peer) and reason (fleet_mismatch, no_fleet_id, secret_mismatch, unsupported_version, wrong_instance, refused_by_peer, protocol).",
	}, []string{"side", "reason"})
	for _, side := range []string{"accept", "dial"} {
		for _, r := range []string{refusedFleetMismatch, refusedSecretMismatch} {
			c.WithLabelValues(side, r) // present at 0, so that an alert can use rate()
		}
	}
	if err := reg.Register(c); err != nil {
		return nil, fmt.Errorf("fleet metrics: %w", err)
	}
	return c, nil
}

// checkHello judges a peer's hello against this fleet: protocol version, fleet id, then the
// channel-bound proof of the peer secret. It returns the refusal reason and a typed error
// (an *api.Error whose message, sent to the peer, says what to fix), or "" and nil.
func (f *fleet) checkHello(ph *api.PeerHello, exporter []byte) (reason string, err error) {
	fleetID := f.reg.FleetID()
	if err := api.CheckVersion(ph.Version); err != nil {
		return refusedVersion, err
	}
	switch {
	case ph.FleetID == "":
		return refusedNoFleetID, &api.Error{Code: api.CodeUnauthenticated, Err: ErrFleetMismatch, Message: fmt.Sprintf(
			"fleet_mismatch: kasd %q sent no fleet id (a version older than fleet ids?); this kasd is in fleet %q", ph.InstanceID, fleetID)}
	case ph.FleetID != fleetID:
		return refusedFleetMismatch, &api.Error{Code: api.CodeUnauthenticated, Err: ErrFleetMismatch, Message: fmt.Sprintf(
			"fleet_mismatch: kasd %q is in fleet %q, this kasd in fleet %q: replicas of one fleet need the same --fleet-id (or, without one, the same --peer-secret-file)",
			ph.InstanceID, ph.FleetID, fleetID)}
	case !auth.VerifyPeerProof(f.cfg.PeerSecret, fleetID, ph.InstanceID, exporter, ph.Proof):
		return refusedSecretMismatch, &api.Error{Code: api.CodeUnauthenticated, Err: ErrPeerSecretMismatch, Message: fmt.Sprintf(
			"secret_mismatch: kasd %q of fleet %q proved another peer secret than this kasd's: every replica of a fleet needs the same --peer-secret-file",
			ph.InstanceID, fleetID)}
	}
	return "", nil
}

// helloFor is this kasd's peer_hello on a session with the given exporter.
func (f *fleet) helloFor(exporter []byte) *api.PeerHello {
	self, fleetID := f.s.cfg.InstanceID, f.reg.FleetID()
	return &api.PeerHello{
		Version:    api.ProtocolVersion,
		InstanceID: self,
		Proof:      auth.PeerProof(f.cfg.PeerSecret, fleetID, self, exporter),
		FleetID:    fleetID,
	}
}

// refused counts and logs a refused peer handshake. A refusal that names a fleet or a secret
// is an operator's mistake that requests will keep running into: logged at error level.
func (f *fleet) refused(side, reason, peer, addr string, err error) {
	f.refusals.WithLabelValues(side, reason).Inc()
	ev := f.s.log.Warn()
	if reason == refusedFleetMismatch || reason == refusedSecretMismatch || reason == refusedNoFleetID ||
		(reason == refusedByPeer && (errors.Is(err, ErrFleetMismatch) || errors.Is(err, ErrPeerSecretMismatch))) {
		ev = f.s.log.Error()
	}
	ev.Err(err).Str("side", side).Str("reason", reason).Str("fleet", f.reg.FleetID()).
		Str("peer", peer).Str("peer_addr", addr).Msg("peer handshake refused")
}

// peerRefusal returns, as a typed error, the refusal of a peer that judged this kasd's hello
// and said why: an error frame, or (when the connection close overtook that frame) the close
// reason of a ConnCodeRefused close. The message's reason prefix (fleet_mismatch:,
// secret_mismatch:) is mapped back to ErrFleetMismatch or ErrPeerSecretMismatch, so that
// callers can tell a foreign fleet from a flaky link. nil: err is no refusal.
func peerRefusal(err error) *api.Error {
	var e *api.Error
	var ae *quicgo.ApplicationError
	switch {
	case errors.As(err, &e) && e.Code != api.CodeProtocol:
	case errors.As(err, &ae) && ae.Remote && ae.ErrorCode == quic.ConnCodeRefused:
		msg, _ := strings.CutPrefix(ae.ErrorMessage, api.CodeUnauthenticated.String()+": ")
		e = &api.Error{Code: api.CodeUnauthenticated, Message: msg}
	default:
		return nil
	}
	switch {
	case strings.HasPrefix(e.Message, refusedFleetMismatch+":"):
		return &api.Error{Code: e.Code, Message: e.Message, Err: ErrFleetMismatch}
	case strings.HasPrefix(e.Message, refusedSecretMismatch+":"):
		return &api.Error{Code: e.Code, Message: e.Message, Err: ErrPeerSecretMismatch}
	}
	return e
}

// refusalCloseReason is the reason of the connection close that follows a refusal: the code and
// message, cut to fit a close frame comfortably.
func refusalCloseReason(e *api.Error) string {
	r := e.Code.String() + ": " + e.Message
	if e.Message == "" {
		r = e.Error()
	}
	if len(r) > 512 {
		r = r[:512]
	}
	return r
}

// CheckFleetSecret is what a kasd does before it serves anything in a fleet: it waits (within
// ctx) for the registry's first read, then compares the peer-secret check that every other
// instance of the fleet published (registry.Instance.FleetCheck) with its own. An instance
// given another secret is an error wrapping ErrPeerSecretMismatch that names it: joining
// would only make every request between the two fail. Instances that published no check are
// not judged. If ctx ends before the first read (etcd unreachable), the error is ctx's, and
// the handshake still refuses such peers later.
func CheckFleetSecret(ctx context.Context, reg *registry.Registry, secret []byte) error {
	if err := reg.WaitSynced(ctx); err != nil {
		return fmt.Errorf("reading fleet %q from etcd: %w", reg.FleetID(), err)
	}
	want := auth.FleetSecretCheck(secret, reg.FleetID())
	var others []string
	for _, in := range reg.Instances() {
		if in.ID != reg.Self().ID && in.FleetCheck != "" && in.FleetCheck != want {
			others = append(others, in.ID)
		}
	}
	if len(others) > 0 {
		return fmt.Errorf("%w: instances %s of fleet %q were given another peer secret than this kasd: "+
			"give every replica the same --peer-secret-file, or start this one with another --fleet-id",
			ErrPeerSecretMismatch, strings.Join(others, ", "), reg.FleetID())
	}
	return nil
}
