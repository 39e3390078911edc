package httpserve

import (
	"io"
	"net/http"
	"net/textproto"
	"strings"
	"time"
)

// ExpectsContinue reports whether net/http wrapped r's body for Expect: 100-continue
// (HTTP/1.1, a body, the expectation).
func ExpectsContinue(r *http.Request) bool {
	return r.ProtoMajor == 1 && r.ProtoMinor >= 1 && r.ContentLength != 0 &&
		strings.EqualFold(textproto.TrimString(r.Header.Get("Expect")), "100-continue")
}

// LingerExpectContinue is for a handler that answered an Expect: 100-continue request (curl
// sends the expectation with uploads over 1 MiB) before reading all its body: an early 401,
// 403 or 413, or an error. net/http lingers after a handler only for a body it reads itself,
// not for one it wrapped for the expectation: it closes such a connection at once, and closing
// with the client's upload unread resets it, often before the client read the answer. So the
// answer is flushed now, and the rest of the body read and dropped until it ends, the client
// stops, or until (the connection's read deadline is set to it), at most LingerLimit bytes.
// Any other request returns at once; so does one whose body was read to its end.
func LingerExpectContinue(w http.ResponseWriter, r *http.Request, until time.Time) {
	if !ExpectsContinue(r) || time.Until(until) <= 0 {
		return
	}
	rc := http.NewResponseController(w)
	_ = rc.Flush()
	_ = rc.SetReadDeadline(until)
	_, _ = io.CopyN(io.Discard, r.Body, LingerLimit)
}

// LingerLimit bounds what LingerExpectContinue drops (at loopback speed its 500 ms would be
// gigabytes).
const LingerLimit = 64 << 20

// RSTAvoidance is how long an unread upload is still read, and dropped, after its handler
// answered (net/http's closeWriteAndWait waits as long before it closes).
const RSTAvoidance = 500 * time.Millisecond
