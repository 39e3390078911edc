package api

import (
	"net/http"
	"strconv"
	"strings"
)

// Code is the single error vocabulary of qkas: it travels in Error
// frames, in the JSON body and Qkas-Error header of HTTP error responses, and
// in metric labels. Codes are append-only: a value, once assigned, keeps its
// meaning forever.
type Code uint16

const (
	CodeOK                 Code = 0  // "ok"                  200
	CodeProtocol           Code = 1  // "protocol_error"      502
	CodeUnsupportedVersion Code = 2  // "unsupported_version" 502
	CodeUnauthenticated    Code = 3  // "unauthenticated"     401
	CodeForbidden          Code = 4  // "forbidden"           403
	CodeAgentNotConnected  Code = 5  // "agent_not_connected" 503
	CodeServiceUnknown     Code = 6  // "service_unknown"     404
	CodeServiceUnavailable Code = 7  // "service_unavailable" 502 (agent could not reach its service)
	CodeOverloaded         Code = 8  // "overloaded"          503
	CodeDeadlineExceeded   Code = 9  // "deadline_exceeded"   504
	CodeShuttingDown       Code = 10 // "shutting_down"       503
	CodeAuthUnavailable    Code = 11 // "auth_unavailable"    503 (GitLab unreachable: retryable, not a bad token)
	CodeInternal           Code = 12 // "internal"            500
	CodeNotHolder          Code = 13 // "not_holder"          503 (stale route: that kasd does not hold the agent)
	CodeBadRequest         Code = 14 // "bad_request"         400
	CodeAgentFailed        Code = 15 // "agent_failed"        502 (stream/connection to the agent broke)
	CodeNotFound           Code = 16 // "not_found"           404 (unknown API path)
	CodeTooLarge           Code = 17 // "too_large"           413
	CodeMethodNotAllowed   Code = 18 // "method_not_allowed"  405
	// CodeClientCanceled: the client went away before its answer was complete. Never sent to
	// a client (nobody reads it); it is how metrics and logs tell a client cancel from an
	// agent failure. 499, as nginx logs it.
	CodeClientCanceled Code = 19 // "client_canceled" 499
	// CodeClientTimeout: the client stopped sending the request body it announced, or stopped
	// reading its response, for longer than kasd waits (--client-stall-timeout). 408.
	CodeClientTimeout Code = 20 // "client_timeout" 408
)

// codeInfo is THE code -> name/HTTP status table of the project. Nothing else
// may map codes to statuses; call Code.HTTPStatus.
var codeInfo = [...]struct {
	name      string
	status    int
	retryable bool
}{
	CodeOK:                 {"ok", http.StatusOK, false},
	CodeProtocol:           {"protocol_error", http.StatusBadGateway, false},
	CodeUnsupportedVersion: {"unsupported_version", http.StatusBadGateway, false},
	CodeUnauthenticated:    {"unauthenticated", http.StatusUnauthorized, false},
	CodeForbidden:          {"forbidden", http.StatusForbidden, false},
	CodeAgentNotConnected:  {"agent_not_connected", http.StatusServiceUnavailable, true},
	CodeServiceUnknown:     {"service_unknown", http.StatusNotFound, false},
	CodeServiceUnavailable: {"service_unavailable", http.StatusBadGateway, false},
	CodeOverloaded:         {"overloaded", http.StatusServiceUnavailable, true},
	CodeDeadlineExceeded:   {"deadline_exceeded", http.StatusGatewayTimeout, false},
	CodeShuttingDown:       {"shutting_down", http.StatusServiceUnavailable, true},
	CodeAuthUnavailable:    {"auth_unavailable", http.StatusServiceUnavailable, true},
	CodeInternal:           {"internal", http.StatusInternalServerError, false},
	CodeNotHolder:          {"not_holder", http.StatusServiceUnavailable, true},
	CodeBadRequest:         {"bad_request", http.StatusBadRequest, false},
	CodeAgentFailed:        {"agent_failed", http.StatusBadGateway, false},
	CodeNotFound:           {"not_found", http.StatusNotFound, false},
	CodeTooLarge:           {"too_large", http.StatusRequestEntityTooLarge, false},
	CodeMethodNotAllowed:   {"method_not_allowed", http.StatusMethodNotAllowed, false},
	CodeClientCanceled:     {"client_canceled", 499, false},
	CodeClientTimeout:      {"client_timeout", http.StatusRequestTimeout, false},
}

func (c Code) known() bool { return int(c) < len(codeInfo) }

// String returns the snake_case name of c, or "code_N" for a code this
// version does not know (e.g. one sent by a newer peer).
func (c Code) String() string {
	if c.known() {
		return codeInfo[c].name
	}
	return "code_" + strconv.Itoa(int(c))
}

// HTTPStatus returns the HTTP status for c. This is the one code -> status
// table of the project; an unknown code maps to 500.
func (c Code) HTTPStatus() int {
	if c.known() {
		return codeInfo[c].status
	}
	return http.StatusInternalServerError
}

// Retryable reports whether the same request may succeed if retried later
// (or on another replica / kasd) without any change: agent_not_connected,
// overloaded, shutting_down, auth_unavailable, not_holder.
func (c Code) Retryable() bool {
	return c.known() && codeInfo[c].retryable
}

// ParseCode is the inverse of Code.String. It also accepts the "code_N" form
// so that a code from a newer peer survives a String/ParseCode round trip.
func ParseCode(s string) (Code, bool) {
	for i := range codeInfo {
		if codeInfo[i].name == s {
			return Code(i), true
		}
	}
	if rest, ok := strings.CutPrefix(s, "code_"); ok && rest != "" && rest[0] != '+' && rest[0] != '-' {
		n, err := strconv.ParseUint(rest, 10, 16)
		if err == nil {
			return Code(n), true
		}
	}
	return 0, false
}
