package kasd

import (
	"context"
	"errors"
	"net"
	"slices"

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
