package httpstream_test

import (
	"context"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/qkas/qkas/api"
	"github.com/qkas/qkas/httpstream"
)

// A GET ends its send side with the request (api.MetaRequestFIN): the agent-side http.Server must
// not see that EOF as the client going away while the handler still works.
func TestEarlyFINKeepsRequestAlive(t *testing.T) {
	p := newPair(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		req := httpstream.FromContext(r.Context()).Request()
		if v, _ := req.MetaValue(api.MetaRequestFIN); v != "1" {
			http.Error(w, "no request-fin", 500)
			return
		}
		select {
		case <-r.Context().Done():
			http.Error(w, "canceled early", 500)
			return
		case <-time.After(100 * time.Millisecond):
		}
		io.WriteString(w, "ok")
	}))
	req, _ := http.NewRequest("GET", "http://svc/", nil)
	for range 3 {
		if got := p.get(t, req, nil); got != "ok" {
			t.Fatalf("got %q", got)
		}
	}
}

// With KeepSendOpen the request goes without MetaRequestFIN and the stream works as before.
func TestKeepSendOpen(t *testing.T) {
	p := newPair(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		req := httpstream.FromContext(r.Context()).Request()
		_, fin := req.MetaValue(api.MetaRequestFIN)
		_, late := req.MetaValue(api.MetaLateResult)
		if fin || !late {
			http.Error(w, "wrong meta", 500)
			return
		}
		io.WriteString(w, "ok")
	}))
	req, _ := http.NewRequest("GET", "http://svc/", nil)
	if got := p.get(t, req, &httpstream.Options{KeepSendOpen: true}); got != "ok" {
		t.Fatalf("got %q", got)
	}
}

// Canceling a request whose FIN was sent with it still cancels the handler's context: the
// STOP_SENDING that comes with the reset ends the held-back EOF.
func TestEarlyFINCancelReachesHandler(t *testing.T) {
	canceled := make(chan struct{})
	started := make(chan struct{})
	p := newPair(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		close(started)
		select {
		case <-r.Context().Done():
			close(canceled)
		case <-time.After(5 * time.Second):
		}
	}))
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, "GET", "http://svc/", nil)
	st, err := p.cli.OpenStreamSync(ctx)
	if err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 1)
	go func() {
		_, err := httpstream.RoundTrip(ctx, newStreamConn(p, st), &api.Request{Kind: api.KindHTTP, Service: "svc"}, req, nil)
		errc <- err
	}()
	<-started
	cancel()
	if err := <-errc; err == nil {
		t.Fatal("RoundTrip succeeded after cancel")
	}
	select {
	case <-canceled:
	case <-time.After(3 * time.Second):
		t.Fatal("the handler's context was not canceled")
	}
}

// A body sent without HoldBody lets the agent send the Result with the response
// (api.MetaLateResult); with HoldBody the agent must answer at once, or the request would wait
// for ever. Both must work.
func TestResultWithAndWithoutHoldBody(t *testing.T) {
	p := newPair(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		req := httpstream.FromContext(r.Context()).Request()
		_, late := req.MetaValue(api.MetaLateResult)
		_, fin := req.MetaValue(api.MetaRequestFIN)
		b, _ := io.ReadAll(r.Body)
		io.WriteString(w, map[bool]string{true: "late", false: "early"}[late]+" "+map[bool]string{true: "fin", false: "open"}[fin]+" "+string(b))
	}))
	for _, tc := range []struct {
		hold bool
		want string
	}{{false, "late open hello"}, {true, "early open hello"}} {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		req, _ := http.NewRequestWithContext(ctx, "POST", "http://svc/", strings.NewReader("hello"))
		if got := p.get(t, req, &httpstream.Options{HoldBody: tc.hold}); got != tc.want {
			t.Errorf("HoldBody %v: got %q, want %q", tc.hold, got, tc.want)
		}
		cancel()
	}
	req, _ := http.NewRequest("GET", "http://svc/", nil)
	if got := p.get(t, req, &httpstream.Options{HoldBody: true}); got != "late fin " {
		t.Errorf("GET with HoldBody: got %q", got)
	}
}

// A refusal is still answered at once, also when the Result could have waited.
func TestRefusalWithLateResult(t *testing.T) {
	p := newPairCheck(t, func(*api.Request) *api.Error { return api.Errorf(api.CodeServiceUnknown, "no") }, http.NotFoundHandler())
	st, err := p.cli.OpenStreamSync(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	req, _ := http.NewRequest("GET", "http://svc/", nil)
	_, err = httpstream.RoundTrip(context.Background(), newStreamConn(p, st), &api.Request{Kind: api.KindHTTP, Service: "svc"}, req, nil)
	if api.CodeOf(err) != api.CodeServiceUnknown {
		t.Fatalf("err %v, want service_unknown", err)
	}
}
