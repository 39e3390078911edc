package httpstream_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"testing"
	"time"

	quicgo "github.com/quic-go/quic-go"

	"github.com/qkas/qkas/httpstream"
	"github.com/qkas/qkas/quic"
)

// A splice between an origin's stream and an agent's (what a forwarding kasd runs): the agent
// reads the start of the upload, answers with the start of its response, stops reading
// (STOP_SENDING, code 0, as agentd's Finish does for a body it did not read) and, once the
// origin has seen that, sends the rest of its response. The STOP_SENDING must reach the origin
// (its writes fail with the agent's code) while the response goes on to its end: it used to
// reset both streams, cutting a response that the agent completed.
func TestSpliceStopSendingEndsOneDirection(t *testing.T) {
	const first, total = 4 << 10, 1 << 20
	response := pattern(total, 7)
	proceed := make(chan struct{})
	agent := newLink(t, func(sc *quic.StreamConn) {
		if _, err := io.ReadFull(sc, make([]byte, first)); err != nil {
			sc.Abort(quic.StreamCodeInternal)
			return
		}
		if _, err := sc.Write(response[:64<<10]); err != nil {
			return
		}
		sc.Stream().CancelRead(quicgo.StreamErrorCode(quic.StreamCodeNoError))
		select {
		case <-proceed:
		case <-time.After(10 * time.Second):
			sc.Abort(quic.StreamCodeInternal)
			return
		}
		if _, err := sc.Write(response[64<<10:]); err != nil {
			return
		}
		_ = sc.CloseWrite()
	})
	spliced := make(chan [2]int64, 1)
	splicer := newLink(t, func(a *quic.StreamConn) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		st, err := agent.qc.OpenStreamSync(ctx)
		if err != nil {
			a.Abort(quic.StreamCodeInternal)
			return
		}
		ab, ba := httpstream.Splice(a, quic.NewStreamConn(agent.qc, st))
		spliced <- [2]int64{ab, ba}
	})

	origin := splicer.open()
	_ = origin.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := origin.Write(make([]byte, first)); err != nil {
		t.Fatal(err)
	}
	// Upload until the agent's STOP_SENDING, passed on by the splice, stops it.
	var werr error
	for werr == nil {
		_, werr = origin.Write(make([]byte, 16<<10))
	}
	var se *quicgo.StreamError
	if !errors.As(werr, &se) || !se.Remote || se.ErrorCode != quicgo.StreamErrorCode(quic.StreamCodeNoError) {
		t.Fatalf("upload ended with %v, want the agent's STOP_SENDING (remote, code 0)", werr)
	}
	close(proceed)
	got, err := io.ReadAll(origin)
	if err != nil || !bytes.Equal(got, response) {
		t.Fatalf("response: %d of %d bytes (equal: %v), err %v", len(got), total, bytes.Equal(got, response), err)
	}
	_ = origin.Close()
	select {
	case n := <-spliced:
		if n[1] != total {
			t.Errorf("splice copied %d response bytes, want %d", n[1], total)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the splice did not end")
	}
}
