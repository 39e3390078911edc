package kasd_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	quicgo "github.com/quic-go/quic-go"

	"github.com/qkas/qkas/api"
	"github.com/qkas/qkas/quic"
)

// sendRawOnStream opens a stream, writes b and FIN, and returns what kasd answers on it.
func sendRawOnStream(t *testing.T, qc *quicgo.Conn, b []byte) (api.Message, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	st, err := qc.OpenStreamSync(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.Write(b); err != nil {
		t.Fatal(err)
	}
	_ = st.Close()
	_ = st.SetReadDeadline(time.Now().Add(5 * time.Second))
	return api.ReadFrame(st)
}

// TestAgentStreamHeadRefusalsCounted: the head of a stream an agent opens towards kasd is
// bounded (64 KiB, 30 s; docs/security.md, "Per-agent budgets"), and a head over the size
// limit or malformed is refused and counted in kasd_limit_rejections_total, for an agent with
// and without api.FeatureControlOnStreams. Both refusals were answered but counted nowhere.
func TestAgentStreamHeadRefusalsCounted(t *testing.T) {
	e := newEnv(t)
	oversize := []byte{byte(api.TypeRequest), 0x01, 0x00, 0x01} // a request frame of 64 KiB + 1
	garbage := []byte{byte(api.TypeRequest), 0, 0, 3, 0xff, 0xff, 0xff}
	unknown := []byte{200, 0, 0, 1, 0}
	// A well-formed head of the wrong kind (agents open gitlab requests only).
	wrongKind := api.AppendFrame(nil, &api.Request{Kind: api.KindHTTP, Service: "web", Method: "GET", Target: "/", ContentLength: 0})
	for _, features := range []uint64{0, api.FeatureControlOnStreams} {
		qc, _, _ := e.rawAgent(&api.Hello{Version: api.ProtocolVersion, Token: e.tokens["alpha"], Replica: "r", Process: "p" + string(rune('0'+features)),
			Services: []string{"web"}, Features: features})
		for _, c := range []struct {
			name   string
			b      []byte
			reason string
		}{
			{"oversize head", oversize, "agent_stream_head_too_large"},
			{"garbage head", garbage, "protocol_error"},
			{"unknown frame", unknown, "protocol_error"},
			{"http request from an agent", wrongKind, "protocol_error"},
		} {
			before := metricValue(t, e.reg, "kasd_limit_rejections_total", "reason", c.reason)
			m, err := sendRawOnStream(t, qc, c.b)
			if ae, ok := m.(*api.Error); err != nil || !ok || ae.Code != api.CodeProtocol {
				t.Fatalf("features %#x, %s: kasd answered %v, %v; want a protocol error", features, c.name, m, err)
			}
			if got := metricValue(t, e.reg, "kasd_limit_rejections_total", "reason", c.reason) - before; got != 1 {
				t.Errorf("features %#x, %s: kasd_limit_rejections_total{reason=%q} grew by %v, want 1", features, c.name, c.reason, got)
			}
		}
		if qc.Context().Err() != nil {
			t.Fatalf("features %#x: the connection ended after refused streams", features)
		}
	}
}

// TestControlStreamGarbageCounted: an agent that sends its connection-level messages on the
// control stream (no api.FeatureControlOnStreams) and sends there a frame over the size limit
// or a malformed one has its connection closed as a protocol violation (ConnCodeProtocol, the
// reason in the close), counted in kasd_limit_rejections_total{reason="protocol_error"}. It
// was closed with code 0 and no reason, and counted nowhere. Another agent is not affected.
func TestControlStreamGarbageCounted(t *testing.T) {
	e := newEnv(t)
	for i, b := range [][]byte{
		{byte(api.TypeGoAway), 0x01, 0x00, 0x01},          // a frame over its maximum
		{byte(api.TypeGoAway), 0, 0, 3, 0xff, 0xff, 0xff}, // a malformed goaway
	} {
		before := metricValue(t, e.reg, "kasd_limit_rejections_total", "reason", "protocol_error")
		qc, control, _ := e.rawAgent(&api.Hello{Version: api.ProtocolVersion, Token: e.tokens["alpha"], Replica: "r", Process: "p" + string(rune('0'+i)), Services: []string{"web"}})
		if _, err := control.Write(b); err != nil {
			t.Fatal(err)
		}
		waitClosed(t, qc, "garbage on the control stream")
		var ae *quicgo.ApplicationError
		if err := context.Cause(qc.Context()); !errors.As(err, &ae) || ae.ErrorCode != quic.ConnCodeProtocol || !strings.HasPrefix(ae.ErrorMessage, "protocol_error: ") {
			t.Errorf("%x: connection closed with %v; want ConnCodeProtocol and the reason", b, err)
		}
		if got := metricValue(t, e.reg, "kasd_limit_rejections_total", "reason", "protocol_error") - before; got != 1 {
			t.Errorf("%x: kasd_limit_rejections_total{reason=protocol_error} grew by %v, want 1", b, got)
		}
	}
	e.rawAgent(&api.Hello{Version: api.ProtocolVersion, Token: e.tokens["beta"], Replica: "r", Process: "p", Services: []string{"web"}})
}
