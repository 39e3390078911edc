package httpstream_test

import (
	"io"
	"net/http"
	"testing"
	"time"

	"github.com/qkas/qkas/api"
	"github.com/qkas/qkas/httpstream"
)

// agentd calls FrameBody for every chunked service response, then WriteHeader. When the
// service's body fails before the head left, the service handler answers with WriteError, an
// Error frame, which ends the response: Finish wrote the framed body's trailers frame after it.
func TestNoFrameAfterErrorFrame(t *testing.T) {
	l := newLink(t, serveHTTP(func(w *httpstream.ResponseWriter, r *http.Request, f *api.Request) {
		w.FrameBody()
		w.WriteHeader(200)
		httpstream.WriteError(w, api.Errorf(api.CodeServiceUnavailable, "service web: connection reset"))
	}))
	sc := l.open()
	req := newRequest(t, "GET", "/t", nil)
	if _, err := sc.Write(api.AppendFrame(nil, frameFor(t, req))); err != nil {
		t.Fatal(err)
	}
	sc.CloseWrite()
	_ = sc.SetReadDeadline(time.Now().Add(5 * time.Second))
	var got []string
	for {
		m, err := api.ReadFrame(sc)
		if err != nil {
			if err != io.EOF {
				got = append(got, "err:"+err.Error())
			}
			break
		}
		got = append(got, m.Type().String())
	}
	t.Logf("frames: %v", got)
	if len(got) == 0 || got[len(got)-1] != api.TypeError.String() {
		t.Fatalf("frames on the stream %v: want the error frame last, then FIN", got)
	}
}
