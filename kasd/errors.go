package kasd

import (
	"context"
	"errors"
	"io"
	"net"
	"slices"

	quicgo "github.com/quic-go/quic-go"

	"github.com/qkas/qkas/api"
)

// asAPIError returns err as an *api.Error, with code def when it is not one already.
func asAPIError(err error, def api.Code) *api.Error {
	var e *api.Error
	if errors.As(err, &e) {
		return e
	}
	if errors.Is(err, context.DeadlineExceeded) || isTimeout(err) {
		return &api.Error{Code: api.CodeDeadlineExceeded, Message: "timed out", Err: err}
	}
	return &api.Error{Code: def, Message: err.Error(), Err: err}
}

// streamError classifies an error seen on an agent stream.
func streamError(err error) *api.Error {
	var e *api.Error
	switch {
	case errors.As(err, &e):
		return e
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return &api.Error{Code: api.CodeAgentFailed, Message: "the agent closed the stream early", Err: err}
	}
	var se *quicgo.StreamError
	if errors.As(err, &se) {
		return &api.Error{Code: api.CodeAgentFailed, Message: "the agent reset the stream", Err: err}
	}
	return &api.Error{Code: api.CodeAgentFailed, Message: "agent connection failed: " + err.Error(), Err: err}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

func isClosed(err error) bool { return errors.Is(err, net.ErrClosed) }

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

func sortedCopy(s []string) []string {
	out := slices.Clone(s)
	slices.Sort(out)
	return slices.Compact(out)
}
