package suite

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// What an origin kasd's access log says about the requests it forwarded: a request answered
// agent_failed at a named peer (sent there, not retried) is failedAtPeer; a success, a failure
// without a peer, or another code is not; forwardedTo names the peer of every line that has one; the holder's own lines are read as before.
func TestReadHolderLogFailedAtPeer(t *testing.T) {
	lines := []string{
		`{"level":"info","instance":"kasd-1","message":"kasd started"}`,
		`{"level":"info","instance":"kasd-1","request_id":"r1","status":502,"code":"agent_failed","route":"forwarded","peer":"kasd-2","message":"access"}`,
		`{"level":"info","instance":"kasd-1","request_id":"r2","status":200,"route":"forwarded","peer":"kasd-2","message":"access"}`,
		`{"level":"info","instance":"kasd-1","request_id":"r3","status":502,"code":"agent_failed","route":"forwarded","message":"access"}`,
		`{"level":"info","instance":"kasd-1","request_id":"r4","status":503,"code":"agent_not_connected","route":"forwarded","peer":"kasd-3","message":"access"}`,
		`{"level":"info","instance":"kasd-1","request_id":"r5","route":"holder","origin":"kasd-3","message":"access"}`,
		`{"level":"info","instance":"kasd-1","request_id":"r6","route":"holder","origin":"kasd-3","code":"not_holder","message":"access"}`,
	}
	path := filepath.Join(t.TempDir(), "kasd-1.log")
	if err := os.WriteFile(path, []byte(strings.Join(lines, "\n")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	h := readHolderLog(path, 0)
	if got := h.failedAtPeer; len(got) != 1 || got["r1"] != "kasd-2" {
		t.Errorf("failedAtPeer = %v, want only r1 at kasd-2", got)
	}
	if got := h.forwardedTo; len(got) != 3 || got["r1"] != "kasd-2" || got["r2"] != "kasd-2" || got["r4"] != "kasd-3" {
		t.Errorf("forwardedTo = %v, want r1, r2 at kasd-2 and r4 at kasd-3", got)
	}
	for _, id := range []string{"r1", "r2", "r3", "r4"} {
		if !h.forwardedOut[id] {
			t.Errorf("forwardedOut lacks %s", id)
		}
	}
	if !h.from("kasd-3", "r5") || h.any("r6") {
		t.Errorf("holder lines: r5 from kasd-3 %v (want true), r6 refused %v (want false)", h.from("kasd-3", "r5"), h.any("r6"))
	}
}
