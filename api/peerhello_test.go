package api

import (
	"bytes"
	"reflect"
	"testing"
)

// A peer_hello from a kasd older than fleet ids (its payload ends after proof) still parses,
// with an empty FleetID that the receiver refuses by name; one with a fleet id reads it back,
// and a fleet id cut short is truncated.
func TestPeerHelloFleetIDIsOptional(t *testing.T) {
	old := payloadFrame(TypePeerHello, cat(uv(2), str("kasd-a"), str("proof")))
	m, _, err := ParseFrame(old)
	if err != nil {
		t.Fatalf("parsing an old peer_hello: %v", err)
	}
	want := &PeerHello{Version: 2, InstanceID: "kasd-a", Proof: []byte("proof")}
	if !reflect.DeepEqual(m, want) {
		t.Fatalf("old peer_hello parsed as %#v", m)
	}
	withFleet := &PeerHello{Version: 2, InstanceID: "kasd-a", Proof: []byte("proof"), FleetID: "prod"}
	f := AppendFrame(nil, withFleet)
	if !bytes.HasPrefix(f[4:], old[4:]) {
		t.Fatal("fleet_id is not appended after the old fields")
	}
	if m, _, err = ParseFrame(f); err != nil || !reflect.DeepEqual(m, withFleet) {
		t.Fatalf("ParseFrame = %#v, %v", m, err)
	}
	cut := payloadFrame(TypePeerHello, cat(uv(2), str("kasd-a"), str("proof"), uv(4), []byte("pr")))
	if _, _, err := ParseFrame(cut); CodeOf(err) != CodeProtocol {
		t.Fatalf("cut fleet_id: %v", err)
	}
}
