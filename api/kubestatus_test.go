package api

import (
	"encoding/json"
	"net/http/httptest"
	"testing"
	"time"
)

func TestWriteKubeStatus(t *testing.T) {
	for _, tc := range []struct {
		err        error
		status     int
		reason     string
		retryAfter string
	}{
		{Errorf(CodeForbidden, "the agent's kubernetes policy does not allow create /api/v1/namespaces/default/configmaps"), 403, "Forbidden", ""},
		{Errorf(CodeUnauthenticated, "token expired"), 401, "Unauthorized", ""},
		{&Error{Code: CodeAgentNotConnected, Message: "agent alpha is not connected", RetryAfter: 2500 * time.Millisecond}, 503, "ServiceUnavailable", "3"},
		{&Error{Code: CodeOverloaded, Message: "too many requests in flight"}, 503, "TooManyRequests", "1"},
		{Errorf(CodeDeadlineExceeded, "no response head within 2s"), 504, "Timeout", ""},
		{Errorf(CodeServiceUnavailable, "the Kubernetes API server is unreachable (connection refused)"), 502, "ServiceUnavailable", ""},
		{Errorf(CodeAgentFailed, "agent alpha: stream reset"), 502, "ServiceUnavailable", ""},
		{Errorf(CodeBadRequest, "bad Qkas-Timeout"), 400, "BadRequest", ""},
		{Errorf(CodeServiceUnknown, "no such service"), 404, "NotFound", ""},
		{Errorf(CodeTooLarge, "body too large"), 413, "RequestEntityTooLarge", ""},
		{Errorf(CodeInternal, "bug"), 500, "InternalError", ""},
		{nil, 500, "InternalError", ""},
	} {
		rec := httptest.NewRecorder()
		rec.Header().Set("Content-Length", "99") // must not survive
		WriteKubeStatus(rec, tc.err)
		code, msg := errorCodeMessage(tc.err)
		if rec.Code != tc.status || rec.Code != code.HTTPStatus() {
			t.Errorf("%v: status %d, want %d", tc.err, rec.Code, tc.status)
		}
		h := rec.Header()
		if h.Get("Content-Type") != "application/json" || h.Get(HeaderError) != code.String() || h.Get("Content-Length") != "" || h.Get("Retry-After") != tc.retryAfter {
			t.Errorf("%v: headers %v", tc.err, h)
		}
		// The shape client-go decodes: a failed v1 Status.
		var st struct {
			Kind, APIVersion, Status, Message, Reason string
			Code                                      int
			Details                                   struct {
				Causes []struct {
					Reason, Message string
				}
				RetryAfterSeconds int
			}
		}
		if err := json.Unmarshal(rec.Body.Bytes(), &st); err != nil {
			t.Fatalf("%v: body %q: %v", tc.err, rec.Body, err)
		}
		if st.Kind != "Status" || st.APIVersion != "v1" || st.Status != "Failure" || st.Code != tc.status || st.Reason != tc.reason ||
			st.Message != "qkas: "+msg || len(st.Details.Causes) != 1 || st.Details.Causes[0].Reason != "Qkas-Error" || st.Details.Causes[0].Message != code.String() {
			t.Errorf("%v: status %+v", tc.err, st)
		}
		if want := tc.retryAfter; (want == "") != (st.Details.RetryAfterSeconds == 0) {
			t.Errorf("%v: retryAfterSeconds %d, Retry-After %q", tc.err, st.Details.RetryAfterSeconds, want)
		}
		// A qkas client reading it gets the code back.
		if e := ReadHTTPError(rec.Result()); e.Code != code {
			t.Errorf("%v: ReadHTTPError code %v", tc.err, e.Code)
		}
	}
}
