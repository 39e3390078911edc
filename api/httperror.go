package api

import (
	"encoding/json"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// ErrorBody is the JSON body of every qkas HTTP error response.
type ErrorBody struct {
	Error   string `json:"error"`   // Code.String()
	Message string `json:"message"` // human-readable detail
}

// HeaderError carries the code string on every error response, so that a
// client can classify an error without parsing the body (and even when a
// proxy in between replaced the body).
const HeaderError = "Qkas-Error"

// maxErrorBody bounds what ReadHTTPError reads from a response body.
const maxErrorBody = 64 << 10

// WriteHTTPError writes err as a qkas error response: status
// CodeOf(err).HTTPStatus(), Content-Type application/json, the Qkas-Error
// header, a Retry-After header (whole seconds, rounded up, at least 1; the
// *Error's RetryAfter if set, else 1) when the code is Retryable, and the
// body {"error": code, "message": message}. The message is the Message of
// the *Error in err's chain, else err.Error().
//
// A nil err, or one whose code is CodeOK, is written as CodeInternal: an
// error response is never a 200.
func WriteHTTPError(w http.ResponseWriter, err error) {
	code, msg := errorCodeMessage(err) // shared with WriteKubeStatus
	h := w.Header()
	h.Del("Content-Length")
	h.Set("Content-Type", "application/json")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set(HeaderError, code.String())
	if code.Retryable() {
		h.Set("Retry-After", strconv.FormatInt(retryAfterSeconds(retryAfterOf(err)), 10))
	}
	body, _ := json.Marshal(ErrorBody{Error: code.String(), Message: msg}) // cannot fail: two strings
	w.WriteHeader(code.HTTPStatus())
	w.Write(append(body, '\n'))
}

func retryAfterSeconds(d time.Duration) int64 {
	if d <= 0 {
		return 1
	}
	s := int64(d / time.Second)
	if d%time.Second != 0 {
		s++
	}
	return max(s, 1)
}

// ReadHTTPError returns the *Error that resp reports, or nil if
// resp.StatusCode < 400. It reads at most 64 KiB of the body and does not
// close it. The code comes from the JSON body, else from the Qkas-Error
// header, else is guessed from the status (a response that did not come from
// qkas, e.g. from an ingress). RetryAfter comes from a Retry-After header in
// seconds.
//
// Only a response with the Qkas-Error header was produced by qkas; without
// it, the error came from the proxied service itself (e.g. a Kubernetes API
// 403 Status) or from something in between, and the code is only a guess.
func ReadHTTPError(resp *http.Response) *Error {
	if resp == nil || resp.StatusCode < 400 {
		return nil
	}
	var raw []byte
	if resp.Body != nil {
		raw, _ = io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
	}
	e := &Error{}
	var body ErrorBody
	codeKnown := false
	if json.Unmarshal(raw, &body) == nil {
		e.Code, codeKnown = ParseCode(body.Error)
		e.Message = body.Message
	} else if len(raw) > 0 {
		e.Message = strings.TrimSpace(string(raw))
	}
	if !codeKnown {
		e.Code, codeKnown = ParseCode(resp.Header.Get(HeaderError))
	}
	if !codeKnown || e.Code == CodeOK {
		e.Code = codeForStatus(resp.StatusCode)
	}
	if e.Message == "" {
		e.Message = resp.Status
		if e.Message == "" {
			e.Message = strconv.Itoa(resp.StatusCode) + " " + http.StatusText(resp.StatusCode)
		}
	}
	if s, err := strconv.ParseInt(strings.TrimSpace(resp.Header.Get("Retry-After")), 10, 32); err == nil && s > 0 {
		e.RetryAfter = time.Duration(s) * time.Second
	}
	return e
}

// codeForStatus guesses a code for an error response that carries none.
// It is deliberately coarse; qkas itself always sends the code.
func codeForStatus(status int) Code {
	switch status {
	case http.StatusBadRequest:
		return CodeBadRequest
	case http.StatusUnauthorized:
		return CodeUnauthenticated
	case http.StatusForbidden:
		return CodeForbidden
	case http.StatusNotFound:
		return CodeNotFound
	case http.StatusRequestEntityTooLarge:
		return CodeTooLarge
	case http.StatusTooManyRequests, http.StatusServiceUnavailable:
		return CodeOverloaded
	case http.StatusGatewayTimeout:
		return CodeDeadlineExceeded
	case http.StatusBadGateway:
		return CodeAgentFailed
	}
	return CodeInternal
}
