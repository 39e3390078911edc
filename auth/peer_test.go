package auth

import (
	"bytes"
	"regexp"
	"testing"
)

func TestPeerProof(t *testing.T) {
	secret := bytes.Repeat([]byte{7}, 32)
	exporter := bytes.Repeat([]byte{1}, PeerExporterLength)
	proof := PeerProof(secret, "prod", "kasd-a", exporter)
	if len(proof) != 32 {
		t.Fatalf("len(proof) = %d", len(proof))
	}
	otherExporter := bytes.Clone(exporter)
	otherExporter[31] ^= 1
	tests := []struct {
		name     string
		secret   []byte
		fleet    string
		instance string
		exporter []byte
		proof    []byte
		want     bool
	}{
		{"verifies", secret, "prod", "kasd-a", exporter, proof, true},
		{"wrong instance", secret, "prod", "kasd-b", exporter, proof, false},
		{"wrong fleet (same secret)", secret, "staging", "kasd-a", exporter, proof, false},
		{"empty fleet", secret, "", "kasd-a", exporter, PeerProof(secret, "", "kasd-a", exporter), false},
		{"wrong exporter (other TLS session)", secret, "prod", "kasd-a", otherExporter, proof, false},
		{"wrong secret", bytes.Repeat([]byte{8}, 32), "prod", "kasd-a", exporter, proof, false},
		{"truncated proof", secret, "prod", "kasd-a", exporter, proof[:16], false},
		{"empty proof", secret, "prod", "kasd-a", exporter, nil, false},
		{"empty secret", nil, "prod", "kasd-a", exporter, PeerProof(nil, "prod", "kasd-a", exporter), false},
		{"empty exporter", secret, "prod", "kasd-a", nil, PeerProof(secret, "prod", "kasd-a", nil), false},
		{"NUL in instance id", secret, "prod", "kasd\x00a", exporter, PeerProof(secret, "prod", "kasd\x00a", exporter), false},
		{"NUL in fleet id", secret, "pr\x00od", "kasd-a", exporter, PeerProof(secret, "pr\x00od", "kasd-a", exporter), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := VerifyPeerProof(tt.secret, tt.fleet, tt.instance, tt.exporter, tt.proof); got != tt.want {
				t.Fatalf("VerifyPeerProof = %v, want %v", got, tt.want)
			}
		})
	}
	// The fleet id, instance id and exporter are separated: moving a byte across a boundary
	// changes the proof.
	if bytes.Equal(PeerProof(secret, "f", "ab", []byte("c")), PeerProof(secret, "f", "a", []byte("bc"))) {
		t.Fatal("instance id and exporter are not separated")
	}
	if bytes.Equal(PeerProof(secret, "fa", "b", []byte("c")), PeerProof(secret, "f", "ab", []byte("c"))) {
		t.Fatal("fleet id and instance id are not separated")
	}
}

func TestDeriveFleetIDAndCheck(t *testing.T) {
	a, b := bytes.Repeat([]byte{7}, 32), bytes.Repeat([]byte{8}, 32)
	id := DeriveFleetID(a)
	if !regexp.MustCompile(`^f-[0-9a-f]{16}$`).MatchString(id) {
		t.Fatalf("DeriveFleetID = %q", id)
	}
	if DeriveFleetID(bytes.Clone(a)) != id {
		t.Fatal("DeriveFleetID is not deterministic")
	}
	if DeriveFleetID(b) == id {
		t.Fatal("two secrets give one fleet id")
	}
	check := FleetSecretCheck(a, "prod")
	if len(check) != 32 || FleetSecretCheck(a, "prod") != check {
		t.Fatalf("FleetSecretCheck = %q", check)
	}
	for _, other := range []string{FleetSecretCheck(b, "prod"), FleetSecretCheck(a, "staging")} {
		if other == check {
			t.Fatal("FleetSecretCheck does not depend on both the secret and the fleet")
		}
	}
	// The three derivations are domain-separated: none equals another for one secret.
	if id[2:] == check[:16] {
		t.Fatal("fleet id and fleet check coincide")
	}
}
