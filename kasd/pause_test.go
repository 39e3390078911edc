package kasd

import (
	"io"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/qkas/qkas/quic"
)

// After a pause, only the peer links made before it are dropped. A link made after the process
// resumed — its old link's idle timer fired first and a request redialled before the silence
// sampler saw the gap — carries requests sent since the resume: dropping it failed them (502
// agent_failed for requests that reached the paused kasd after SIGCONT, `make chaos`
// kasd-stop, 2026-12-02).
func TestDropLinksAfterPauseKeepsLinksMadeSince(t *testing.T) {
	s := &Server{log: zerolog.New(io.Discard)}
	f := &fleet{s: s, cfg: &FleetConfig{PeerQUIC: quic.Config{MaxIdleTimeout: time.Second}}, links: map[string]*peerLink{}}
	pauseFrom := time.Now().Add(-7 * time.Second)
	link := func(readyAt time.Time, ready bool) *peerLink {
		l := &peerLink{ready: make(chan struct{}), readyAt: readyAt}
		if ready {
			close(l.ready)
		}
		return l
	}
	f.links["before"] = link(pauseFrom.Add(-time.Minute), true)
	f.links["after"] = link(time.Now(), true)
	f.links["dialling"] = link(time.Time{}, false)

	f.dropLinksAfterPause(pauseFrom.Add(silenceSample), 2*time.Second)
	if _, ok := f.links["before"]; ok {
		t.Error("a link made before the pause was kept")
	}
	if _, ok := f.links["after"]; !ok {
		t.Error("a link made after the pause was dropped")
	}
	if _, ok := f.links["dialling"]; !ok {
		t.Error("a link still dialling was dropped")
	}

	// A pause shorter than the peer idle timeout drops nothing.
	f.links["before"] = link(pauseFrom.Add(-time.Minute), true)
	f.dropLinksAfterPause(pauseFrom.Add(silenceSample), 500*time.Millisecond)
	if len(f.links) != 3 {
		t.Errorf("%d links after a short pause, want 3", len(f.links))
	}
}
