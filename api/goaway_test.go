package api

import (
	"bytes"
	"strings"
	"testing"
)

// TestGoAwayPrefer: the rebalancing hint survives a round trip, a long reason is cut so that
// the hint still fits, and a GoAway from a sender that predates the hint (reason only) parses
// with an empty Prefer.
func TestGoAwayPrefer(t *testing.T) {
	for _, in := range []*GoAway{
		{Reason: "rebalance", Prefer: "kasd-3"},
		{Reason: strings.Repeat("✓", 1000), Prefer: "kasd-3"},
		{Reason: "drain"},
	} {
		var buf bytes.Buffer
		if err := WriteFrame(&buf, in); err != nil {
			t.Fatal(err)
		}
		m, err := ReadFrame(&buf)
		if err != nil {
			t.Fatal(err)
		}
		g := m.(*GoAway)
		if g.Prefer != in.Prefer || !strings.HasPrefix(in.Reason, g.Reason) || g.Reason == "" {
			t.Fatalf("%q/%q came back as %q/%q", in.Reason[:min(len(in.Reason), 20)], in.Prefer, g.Reason[:min(len(g.Reason), 20)], g.Prefer)
		}
	}
	old := append(header(TypeGoAway, 6), appendString(nil, "drain")...)
	m, err := ReadFrame(bytes.NewReader(old))
	if err != nil {
		t.Fatal(err)
	}
	if g := m.(*GoAway); g.Reason != "drain" || g.Prefer != "" {
		t.Fatalf("old GoAway parsed as %+v", g)
	}
	// An instance id longer than the limit is not sent (rather than cut into another name).
	long := &GoAway{Reason: "r", Prefer: strings.Repeat("k", MaxPreferLen+1)}
	m, err = ReadFrame(bytes.NewReader(AppendFrame(nil, long)))
	if err != nil {
		t.Fatal(err)
	}
	if g := m.(*GoAway); g.Prefer != "" {
		t.Fatalf("over-long Prefer sent: %d bytes", len(g.Prefer))
	}
}
