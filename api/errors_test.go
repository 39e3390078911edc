package api

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
	"time"
)

func TestCodeTable(t *testing.T) {
	want := []struct {
		code      Code
		name      string
		status    int
		retryable bool
	}{
		{CodeOK, "ok", 200, false},
		{CodeProtocol, "protocol_error", 502, false},
		{CodeUnsupportedVersion, "unsupported_version", 502, false},
		{CodeUnauthenticated, "unauthenticated", 401, false},
		{CodeForbidden, "forbidden", 403, false},
		{CodeAgentNotConnected, "agent_not_connected", 503, true},
		{CodeServiceUnknown, "service_unknown", 404, false},
		{CodeServiceUnavailable, "service_unavailable", 502, false},
		{CodeOverloaded, "overloaded", 503, true},
		{CodeDeadlineExceeded, "deadline_exceeded", 504, false},
		{CodeShuttingDown, "shutting_down", 503, true},
		{CodeAuthUnavailable, "auth_unavailable", 503, true},
		{CodeInternal, "internal", 500, false},
		{CodeNotHolder, "not_holder", 503, true},
		{CodeBadRequest, "bad_request", 400, false},
		{CodeAgentFailed, "agent_failed", 502, false},
		{CodeNotFound, "not_found", 404, false},
		{CodeTooLarge, "too_large", 413, false},
		{CodeMethodNotAllowed, "method_not_allowed", 405, false},
		{CodeClientCanceled, "client_canceled", 499, false},
		{CodeClientTimeout, "client_timeout", 408, false},
	}
	if len(want) != len(codeInfo) {
		t.Fatalf("test covers %d codes, table has %d", len(want), len(codeInfo))
	}
	for i, w := range want {
		if int(w.code) != i {
			t.Fatalf("codes not dense: %v at %d", w.code, i)
		}
		if w.code.String() != w.name || w.code.HTTPStatus() != w.status || w.code.Retryable() != w.retryable {
			t.Errorf("%d: %q %d %v; want %q %d %v", w.code, w.code.String(), w.code.HTTPStatus(), w.code.Retryable(), w.name, w.status, w.retryable)
		}
		if c, ok := ParseCode(w.name); !ok || c != w.code {
			t.Errorf("ParseCode(%q) = %v, %v", w.name, c, ok)
		}
	}
	unknown := Code(1000)
	if unknown.String() != "code_1000" || unknown.HTTPStatus() != 500 || unknown.Retryable() {
		t.Errorf("unknown code: %q %d %v", unknown.String(), unknown.HTTPStatus(), unknown.Retryable())
	}
	for _, c := range []Code{19, 20, 1000, 65535} {
		if got, ok := ParseCode(c.String()); !ok || got != c {
			t.Errorf("ParseCode(%q) = %v, %v", c.String(), got, ok)
		}
	}
	for _, s := range []string{"", "OK", "code_", "code_x", "code_65536", "code_-1", "code_+1", "protocol"} {
		if c, ok := ParseCode(s); ok {
			t.Errorf("ParseCode(%q) = %v, true", s, c)
		}
	}
}

func TestErrorString(t *testing.T) {
	cause := errors.New("connection refused")
	for _, tc := range []struct {
		err  *Error
		want string
	}{
		{&Error{Code: CodeServiceUnknown, Message: `no service "x"`}, `service_unknown: no service "x"`},
		{&Error{Code: CodeAgentFailed, Err: cause}, "agent_failed: connection refused"},
		{&Error{Code: CodeAgentFailed, Message: "dial", Err: cause}, "agent_failed: dial"},
		{&Error{Code: CodeOverloaded}, "overloaded"},
		{&Error{Code: 99, Message: "m"}, "code_99: m"},
	} {
		if got := tc.err.Error(); got != tc.want {
			t.Errorf("Error() = %q, want %q", got, tc.want)
		}
	}
}

func TestErrorfAndIs(t *testing.T) {
	cause := errors.New("refused")
	e := Errorf(CodeServiceUnavailable, "dial %s: %w", "svc", cause)
	if e.Message != "dial svc: refused" || e.Err != cause || !errors.Is(e, cause) {
		t.Fatalf("Errorf = %#v", e)
	}
	c2 := errors.New("second")
	e = Errorf(CodeInternal, "%w and %w", cause, c2)
	if !errors.Is(e, cause) || !errors.Is(e, c2) {
		t.Fatalf("Errorf with two %%w lost a cause: %#v", e)
	}
	if e := Errorf(CodeBadRequest, "plain %d", 1); e.Err != nil || e.Message != "plain 1" {
		t.Fatalf("Errorf without %%w = %#v", e)
	}

	wrapped := fmt.Errorf("proxy: %w", &Error{Code: CodeNotHolder, Message: "moved"})
	for _, tc := range []struct {
		target error
		want   bool
	}{
		{&Error{Code: CodeNotHolder}, true},
		{&Error{Code: CodeNotHolder, Message: "moved"}, true},
		{&Error{Code: CodeNotHolder, Message: "other"}, false},
		{&Error{Code: CodeOverloaded}, false},
		{(*Error)(nil), false},
		{cause, false},
	} {
		if got := errors.Is(wrapped, tc.target); got != tc.want {
			t.Errorf("errors.Is(%v, %#v) = %v", wrapped, tc.target, got)
		}
	}
}

func TestCodeOf(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), -time.Second)
	defer cancel()
	for _, tc := range []struct {
		err  error
		want Code
	}{
		{nil, CodeOK},
		{&Error{Code: CodeForbidden}, CodeForbidden},
		{fmt.Errorf("a: %w", fmt.Errorf("b: %w", &Error{Code: CodeAuthUnavailable})), CodeAuthUnavailable},
		{context.DeadlineExceeded, CodeDeadlineExceeded},
		{ctx.Err(), CodeDeadlineExceeded},
		{fmt.Errorf("read: %w", os.ErrDeadlineExceeded), CodeDeadlineExceeded},
		{&Error{Code: CodeAgentFailed, Err: context.DeadlineExceeded}, CodeAgentFailed}, // explicit code wins
		{context.Canceled, CodeInternal},
		{io.EOF, CodeInternal},
		{errors.New("x"), CodeInternal},
	} {
		if got := CodeOf(tc.err); got != tc.want {
			t.Errorf("CodeOf(%v) = %v, want %v", tc.err, got, tc.want)
		}
	}
}

func TestWriteReadHTTPError(t *testing.T) {
	for _, tc := range []struct {
		err        error
		code       Code
		message    string
		retryAfter string
	}{
		{&Error{Code: CodeServiceUnknown, Message: `no service "x"`}, CodeServiceUnknown, `no service "x"`, ""},
		{&Error{Code: CodeOverloaded, Message: "busy"}, CodeOverloaded, "busy", "1"},
		{&Error{Code: CodeNotHolder, Message: "moved", RetryAfter: 2100 * time.Millisecond}, CodeNotHolder, "moved", "3"},
		{&Error{Code: CodeShuttingDown, RetryAfter: time.Millisecond}, CodeShuttingDown, "", "1"},
		{&Error{Code: CodeAgentFailed, Err: errors.New("reset")}, CodeAgentFailed, "reset", ""},
		{fmt.Errorf("wrap: %w", &Error{Code: CodeUnauthenticated, Message: "bad jwt"}), CodeUnauthenticated, "bad jwt", ""},
		{&Error{Code: CodeDeadlineExceeded, Message: "slow", RetryAfter: time.Minute}, CodeDeadlineExceeded, "slow", ""}, // not retryable: no header
		{context.DeadlineExceeded, CodeDeadlineExceeded, "context deadline exceeded", ""},
		{errors.New("boom"), CodeInternal, "boom", ""},
		{nil, CodeInternal, "error without a code", ""},
		{&Error{Code: CodeOK, Message: "?"}, CodeInternal, "?", ""},
		{&Error{Code: 300, Message: "future"}, 300, "future", ""},
	} {
		rec := httptest.NewRecorder()
		rec.Header().Set("Content-Length", "12345")
		WriteHTTPError(rec, tc.err)
		resp := rec.Result()
		if resp.StatusCode != tc.code.HTTPStatus() {
			t.Errorf("%v: status %d, want %d", tc.err, resp.StatusCode, tc.code.HTTPStatus())
		}
		if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
			t.Errorf("%v: Content-Type %q", tc.err, ct)
		}
		if h := resp.Header.Get(HeaderError); h != tc.code.String() {
			t.Errorf("%v: %s = %q", tc.err, HeaderError, h)
		}
		if ra := resp.Header.Get("Retry-After"); ra != tc.retryAfter {
			t.Errorf("%v: Retry-After = %q, want %q", tc.err, ra, tc.retryAfter)
		}
		if cl := resp.Header.Get("Content-Length"); cl == "12345" {
			t.Errorf("%v: stale Content-Length kept", tc.err)
		}
		body := rec.Body.String()
		want := fmt.Sprintf(`{"error":%q,"message":%q}`+"\n", tc.code.String(), tc.message)
		if body != want {
			t.Errorf("%v: body %s, want %s", tc.err, body, want)
		}
		got := ReadHTTPError(resp)
		wantMsg := tc.message
		if wantMsg == "" {
			wantMsg = resp.Status // ReadHTTPError never returns an empty message
		}
		if got == nil || got.Code != tc.code || got.Message != wantMsg {
			t.Errorf("%v: ReadHTTPError = %#v", tc.err, got)
		}
		if tc.retryAfter != "" && got.RetryAfter < time.Second {
			t.Errorf("%v: ReadHTTPError RetryAfter = %v", tc.err, got.RetryAfter)
		}
	}
}

func TestReadHTTPErrorFallbacks(t *testing.T) {
	mk := func(status int, header http.Header, body string) *http.Response {
		if header == nil {
			header = http.Header{}
		}
		return &http.Response{StatusCode: status, Status: fmt.Sprintf("%d %s", status, http.StatusText(status)), Header: header, Body: io.NopCloser(strings.NewReader(body))}
	}
	if e := ReadHTTPError(mk(200, nil, "ok")); e != nil {
		t.Fatalf("200: %v", e)
	}
	if e := ReadHTTPError(mk(304, nil, "")); e != nil {
		t.Fatalf("304: %v", e)
	}
	for _, tc := range []struct {
		resp    *http.Response
		code    Code
		message string
	}{
		// Header only (body replaced by something in between).
		{mk(503, http.Header{HeaderError: {"not_holder"}}, "<html>oops</html>"), CodeNotHolder, "<html>oops</html>"},
		// JSON without our code, no header: guessed from status.
		{mk(403, nil, `{"kind":"Status","message":"forbidden by RBAC"}`), CodeForbidden, "forbidden by RBAC"},
		{mk(502, nil, "bad gateway\n"), CodeAgentFailed, "bad gateway"},
		{mk(504, nil, ""), CodeDeadlineExceeded, "504 Gateway Timeout"},
		{mk(429, http.Header{"Retry-After": {"7"}}, ""), CodeOverloaded, "429 Too Many Requests"},
		{mk(418, nil, ""), CodeInternal, "418 I'm a teapot"},
		// Body code wins over header and status.
		{mk(500, http.Header{HeaderError: {"internal"}}, `{"error":"too_large","message":"m"}`), CodeTooLarge, "m"},
	} {
		got := ReadHTTPError(tc.resp)
		if got == nil || got.Code != tc.code || got.Message != tc.message {
			t.Errorf("ReadHTTPError(%d) = %#v, want %v %q", tc.resp.StatusCode, got, tc.code, tc.message)
		}
	}
	if got := ReadHTTPError(mk(429, http.Header{"Retry-After": {"7"}}, "")); got.RetryAfter != 7*time.Second {
		t.Errorf("RetryAfter = %v", got.RetryAfter)
	}
	// The body read is bounded.
	huge := strings.Repeat("x", 1<<20)
	if got := ReadHTTPError(mk(500, nil, huge)); len(got.Message) != maxErrorBody {
		t.Errorf("read %d bytes of body", len(got.Message))
	}
}

// TestHTTPErrorOverServer goes through a real HTTP round trip.
func TestHTTPErrorOverServer(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		WriteHTTPError(w, Errorf(CodeAgentNotConnected, "agent %s not connected", "42"))
	}))
	defer srv.Close()
	resp, err := http.Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	e := ReadHTTPError(resp)
	if e == nil || e.Code != CodeAgentNotConnected || e.Message != "agent 42 not connected" || e.RetryAfter != time.Second {
		t.Fatalf("ReadHTTPError = %#v", e)
	}
	if !errors.Is(e, &Error{Code: CodeAgentNotConnected}) || !e.Code.Retryable() {
		t.Fatalf("not classified: %v", e)
	}
}
