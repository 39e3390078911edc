package auth

import (
	"bytes"
	"testing"
)

func TestPeerProof(t *testing.T) {
	secret := bytes.Repeat([]byte{7}, 32)
	exporter := bytes.Repeat([]byte{1}, PeerExporterLength)
	proof := PeerProof(secret, "kasd-a", exporter)
	if len(proof) != 32 {
		t.Fatalf("len(proof) = %d", len(proof))
	}
	otherExporter := bytes.Clone(exporter)
	otherExporter[31] ^= 1
	tests := []struct {
		name     string
		secret   []byte
		instance string
		exporter []byte
		proof    []byte
		want     bool
	}{
		{"verifies", secret, "kasd-a", exporter, proof, true},
		{"wrong instance", secret, "kasd-b", exporter, proof, false},
		{"wrong exporter (other TLS session)", secret, "kasd-a", otherExporter, proof, false},
		{"wrong secret", bytes.Repeat([]byte{8}, 32), "kasd-a", exporter, proof, false},
		{"truncated proof", secret, "kasd-a", exporter, proof[:16], false},
		{"empty proof", secret, "kasd-a", exporter, nil, false},
		{"empty secret", nil, "kasd-a", exporter, PeerProof(nil, "kasd-a", exporter), false},
		{"empty exporter", secret, "kasd-a", nil, PeerProof(secret, "kasd-a", nil), false},
		{"NUL in instance id", secret, "kasd\x00a", exporter, PeerProof(secret, "kasd\x00a", exporter), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := VerifyPeerProof(tt.secret, tt.instance, tt.exporter, tt.proof); got != tt.want {
				t.Fatalf("VerifyPeerProof = %v, want %v", got, tt.want)
			}
		})
	}
	// The instance id and exporter are separated: moving a byte across the
	// boundary changes the proof.
	if bytes.Equal(PeerProof(secret, "ab", []byte("c")), PeerProof(secret, "a", []byte("bc"))) {
		t.Fatal("instance id and exporter are not separated")
	}
}
