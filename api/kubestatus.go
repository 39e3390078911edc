package api

import (
	"encoding/json"
	"net/http"
	"strconv"
)

// Kubernetes clients (kubectl, client-go, the Python client) read an error response as a
// metav1.Status object: with any other body client-go reports "unknown" (it shows a non-Status
// body only when it is text/plain). On agentd's kubernetes service every error qkas itself
// produces is therefore written by WriteKubeStatus instead of WriteHTTPError: the same status
// line and headers (Qkas-Error, Retry-After), a Status body.

// KubeStatus is the JSON form of a failed Kubernetes meta/v1 Status, as the API server writes
// it. The field order and names are the API server's.
type KubeStatus struct {
	Kind       string             `json:"kind"`       // "Status"
	APIVersion string             `json:"apiVersion"` // "v1"
	Metadata   struct{}           `json:"metadata"`
	Status     string             `json:"status"`  // "Failure"
	Message    string             `json:"message"` // "qkas: " + the qkas message
	Reason     string             `json:"reason"`  // KubeReason(code)
	Details    *KubeStatusDetails `json:"details,omitempty"`
	Code       int                `json:"code"` // the HTTP status, Code.HTTPStatus()
}

// KubeStatusDetails is meta/v1 StatusDetails. qkas puts its code in the first cause, so that a
// client that kept only the body can still classify the error.
type KubeStatusDetails struct {
	Causes            []KubeStatusCause `json:"causes,omitempty"`
	RetryAfterSeconds int64             `json:"retryAfterSeconds,omitempty"`
}

// KubeStatusCause is meta/v1 StatusCause: Type is serialised as "reason".
type KubeStatusCause struct {
	Type    string `json:"reason"`  // "Qkas-Error"
	Message string `json:"message"` // the qkas code, e.g. "agent_not_connected"
}

// KubeStatusCauseType marks the cause that carries qkas's code in a Status written by qkas.
const KubeStatusCauseType = HeaderError

// KubeReason is the meta/v1 StatusReason for a qkas code: what kubectl prints in parentheses
// ("Error from server (Forbidden): ..."), and what client-go's errors.IsForbidden,
// IsServiceUnavailable, IsTimeout, IsTooManyRequests... test. It maps codes to reasons only;
// the HTTP status stays Code.HTTPStatus.
func KubeReason(c Code) string {
	switch c {
	case CodeUnauthenticated:
		return "Unauthorized"
	case CodeForbidden:
		return "Forbidden"
	case CodeServiceUnknown, CodeNotFound:
		return "NotFound"
	case CodeBadRequest:
		return "BadRequest"
	case CodeMethodNotAllowed:
		return "MethodNotAllowed"
	case CodeTooLarge:
		return "RequestEntityTooLarge"
	case CodeOverloaded:
		return "TooManyRequests" // a named limit of qkas; the status stays 503 with Retry-After
	case CodeDeadlineExceeded, CodeClientTimeout:
		return "Timeout"
	case CodeAgentNotConnected, CodeServiceUnavailable, CodeAgentFailed, CodeShuttingDown,
		CodeAuthUnavailable, CodeNotHolder:
		return "ServiceUnavailable"
	}
	return "InternalError" // internal, protocol_error, unsupported_version, unknown codes
}

// NewKubeStatus returns the Status for err (classified as WriteHTTPError does).
func NewKubeStatus(err error) *KubeStatus {
	code, msg := errorCodeMessage(err)
	st := &KubeStatus{
		Kind: "Status", APIVersion: "v1", Status: "Failure",
		Message: "qkas: " + msg,
		Reason:  KubeReason(code),
		Code:    code.HTTPStatus(),
		Details: &KubeStatusDetails{Causes: []KubeStatusCause{{Type: KubeStatusCauseType, Message: code.String()}}},
	}
	if code.Retryable() {
		st.Details.RetryAfterSeconds = retryAfterSeconds(retryAfterOf(err))
	}
	return st
}

// WriteKubeStatus writes err as a Kubernetes Status error response: the status, Qkas-Error and
// Retry-After headers of WriteHTTPError, Content-Type application/json, and a Status body
// (kind Status, apiVersion v1, status Failure, code, reason KubeReason(code), message
// "qkas: <message>", details.causes[0] {reason: "Qkas-Error", message: <code>}, and
// details.retryAfterSeconds when the code is retryable).
func WriteKubeStatus(w http.ResponseWriter, err error) {
	st := NewKubeStatus(err)
	h := w.Header()
	h.Del("Content-Length")
	h.Set("Content-Type", "application/json")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set(HeaderError, st.Details.Causes[0].Message)
	if st.Details.RetryAfterSeconds > 0 {
		h.Set("Retry-After", strconv.FormatInt(st.Details.RetryAfterSeconds, 10))
	}
	body, _ := json.Marshal(st) // cannot fail: strings and integers
	w.WriteHeader(st.Code)
	w.Write(append(body, '\n'))
}

// errorCodeMessage is how WriteHTTPError and WriteKubeStatus classify err: never CodeOK.
func errorCodeMessage(err error) (Code, string) {
	code := CodeOf(err)
	msg := messageOf(err)
	if code == CodeOK {
		code = CodeInternal
		if msg == "" {
			msg = "error without a code"
		}
	}
	return code, msg
}

// WriteKubeText writes err as a text/plain error response with the headers of WriteKubeStatus
// and the body "qkas: <message>". It is for the requests whose Kubernetes clients read the
// body raw (client-go's discovery: GET /api, /apis, /version, /openapi/...): client-go never
// decodes a Status there and shows the body only when it is text, else "unknown".
func WriteKubeText(w http.ResponseWriter, err error) {
	st := NewKubeStatus(err)
	h := w.Header()
	h.Del("Content-Length")
	h.Set("Content-Type", "text/plain; charset=utf-8")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set(HeaderError, st.Details.Causes[0].Message)
	if st.Details.RetryAfterSeconds > 0 {
		h.Set("Retry-After", strconv.FormatInt(st.Details.RetryAfterSeconds, 10))
	}
	w.WriteHeader(st.Code)
	w.Write([]byte(st.Message + "\n"))
}
