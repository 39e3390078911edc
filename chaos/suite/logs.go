package suite

import (
	"bufio"
	"encoding/json"
	"io"
	"os"
	"strings"
)

// holderLog is what a kasd's access log says about requests it served as the holder of the
// agent for another kasd (route "holder").
type holderLog struct {
	// byOrigin maps an origin kasd's instance id to the request ids it forwarded here.
	byOrigin map[string]map[string]bool
	// forwardedOut holds the client requests this kasd forwarded to a peer (route
	// "forwarded" on its own API), however they ended.
	forwardedOut map[string]bool
	// forwardedTo maps the id of a client request this kasd forwarded to the peer its access
	// line names: the last holder it was sent to, however it ended.
	forwardedTo map[string]string
	// failedAtPeer maps the id of a client request this kasd forwarded to a peer and answered
	// with agent_failed to that peer (the access line's "peer"): the request was sent to the
	// peer and not retried elsewhere, which kasd does only when the peer's QUIC stack
	// acknowledged something after the request was sent (a request the peer did not
	// acknowledge goes to the next holder: kasd route.go, unacknowledged), so its bytes had
	// reached the peer process.
	failedAtPeer map[string]string
}

// readHolderLog reads the access lines logged by the kasd whose log is path since offset.
// A request's id is the client's X-Request-Id (the load sets one per request), the same at every
// hop: that the holder logged it means the forwarded request's head reached the holder. Lines
// with a refusal's code (not_holder, shutting_down, …: the origin may send the request
// elsewhere, and does) are left out: only requests the holder passed on to the agent, or was
// passing on when it failed (agent_failed), count.
func readHolderLog(path string, offset int64) holderLog {
	h := holderLog{byOrigin: map[string]map[string]bool{}, forwardedOut: map[string]bool{}, forwardedTo: map[string]string{}, failedAtPeer: map[string]string{}}
	f, err := os.Open(path)
	if err != nil {
		return h
	}
	defer f.Close()
	if _, err := f.Seek(offset, io.SeekStart); err != nil {
		return h
	}
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		line := sc.Bytes()
		if strings.Contains(string(line), `"route":"forwarded"`) {
			var e struct {
				Message   string `json:"message"`
				RequestID string `json:"request_id"`
				Peer      string `json:"peer"`
				Code      string `json:"code"`
			}
			if json.Unmarshal(line, &e) == nil && e.Message == "access" {
				h.forwardedOut[e.RequestID] = true
				if e.Peer != "" {
					h.forwardedTo[e.RequestID] = e.Peer
				}
				if e.Code == "agent_failed" && e.Peer != "" {
					h.failedAtPeer[e.RequestID] = e.Peer
				}
			}
			continue
		}
		if !strings.Contains(string(line), `"route":"holder"`) {
			continue
		}
		var e struct {
			Message   string `json:"message"`
			Route     string `json:"route"`
			Origin    string `json:"origin"`
			RequestID string `json:"request_id"`
			Code      string `json:"code"`
		}
		if json.Unmarshal(line, &e) != nil || e.Message != "access" || e.Route != "holder" ||
			(e.Code != "" && e.Code != "agent_failed") {
			continue
		}
		m := h.byOrigin[e.Origin]
		if m == nil {
			m = map[string]bool{}
			h.byOrigin[e.Origin] = m
		}
		m[e.RequestID] = true
	}
	return h
}

// from reports whether the holder logged request id as forwarded by origin.
func (h holderLog) from(origin, id string) bool { return h.byOrigin[origin][id] }

// any reports whether the holder logged request id, forwarded by any kasd.
func (h holderLog) any(id string) bool {
	for _, m := range h.byOrigin {
		if m[id] {
			return true
		}
	}
	return false
}
