package httpstream

import (
	"context"
	"errors"
	"net/http"
	"time"

	quicgo "github.com/quic-go/quic-go"

	"github.com/qkas/qkas/api"
	"github.com/qkas/qkas/quic"
)

// Served says how Serve ended.
type Served struct {
	Head    *api.Request // nil when no valid head could be read
	Refusal *api.Error   // set when the stream was refused before the handler ran
	Status  int          // the status the handler answered (0 when refused)
	// Canceled: the peer went away (stopped or reset the stream, its client gone) before the
	// response was complete.
	Canceled bool
	// HeadError: the handler's response head was over the limits (api.MaxHeadSize,
	// api.MaxHeaderFields) and the peer got a service_unavailable error frame instead; Status
	// is then that error's.
	HeadError error
	// TrailerError: the handler's trailers were over the limits, and the stream was reset as
	// a service's failure after the body.
	TrailerError error
}

// Serve runs the acceptor side of one request stream: it reads the head within headTimeout,
// asks check (nil to serve, else the refusal sent back), builds the handler's request and
// ResponseWriter, lets a gated sender go on (Accept), calls handle and finishes the response.
// A handler that aborts (http.ErrAbortHandler) gets the stream reset. The request's context
// derives from ctx and ends with the stream.
func Serve(ctx context.Context, sc *quic.StreamConn, headTimeout time.Duration, check func(*api.Request) *api.Error, handle func(w *ResponseWriter, r *http.Request, f *api.Request)) Served {
	_ = sc.SetReadDeadline(time.Now().Add(headTimeout))
	f, err := ReadRequest(sc)
	if err != nil {
		e := api.Errorf(api.CodeProtocol, "bad request head: %v", err)
		Refuse(sc, e)
		return Served{Refusal: e}
	}
	_ = sc.SetReadDeadline(time.Time{})
	return ServeHead(ctx, sc, f, check, handle)
}

// ServeHead is Serve for a stream whose head f was read by the caller (who read the stream's
// first frame to learn what kind of stream it is).
func ServeHead(ctx context.Context, sc *quic.StreamConn, f *api.Request, check func(*api.Request) *api.Error, handle func(w *ResponseWriter, r *http.Request, f *api.Request)) Served {
	if e := check(f); e != nil {
		Refuse(sc, e)
		return Served{Head: f, Refusal: e}
	}
	r, done, err := NewRequest(ctx, sc, f)
	if err != nil {
		e := api.Errorf(api.CodeOf(err), "%v", err)
		Refuse(sc, e)
		return Served{Head: f, Refusal: e}
	}
	defer done()
	if err := Accept(sc, f); err != nil {
		sc.Abort(quic.StreamCodeCanceled)
		return Served{Head: f, Canceled: true}
	}
	w := NewResponseWriter(sc, f)
	func() {
		defer w.Recover()
		handle(w, r, f)
	}()
	out := Served{Head: f}
	if err := r.Context().Err(); err != nil && !errors.Is(err, context.DeadlineExceeded) || peerStopped(sc) {
		out.Canceled = true
	}
	w.Finish()
	// After Finish, which may send the head (and find it over the limits).
	out.Status, out.HeadError, out.TrailerError = w.Status(), w.HeadError(), w.TrailerError()
	return out
}

// peerStopped reports whether the peer stopped the stream (its client went away). The request's
// context learns it too, but from a goroutine of its own (context.AfterFunc): a handler that
// failed on the stopped stream can return before its context is canceled.
func peerStopped(sc *quic.StreamConn) bool {
	err := context.Cause(sc.Context())
	if err == nil {
		return false // the common case, without the allocation errors.As's target costs
	}
	var se *quicgo.StreamError
	return errors.As(err, &se) && se.Remote
}
