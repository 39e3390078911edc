package agentd

import (
	"bytes"
	"crypto/tls"
	"encoding/json"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/qkas/qkas/api"
	"github.com/qkas/qkas/httpstream"
)

// The access line's fields; errors and impersonated requests are logged even when only errors
// are; nothing is logged when the log is off.
func TestAccessLogLine(t *testing.T) {
	var buf bytes.Buffer
	newAgent := func(al AccessLogConfig) *Agent {
		log := zerolog.New(&buf)
		a, err := New(Config{KasAddresses: []string{"127.0.0.1:1"}, Token: "t", TLS: &tls.Config{},
			Services: map[string]*url.URL{"web": {Scheme: "http", Host: "127.0.0.1:1"}}, Log: &log, AccessLog: al})
		if err != nil {
			t.Fatal(err)
		}
		return a
	}
	ok := &api.Request{Kind: api.KindHTTP, Service: "web", RequestID: "r-ok", Method: "GET", Target: "/x?token=s3cret"}
	imp := &api.Request{Kind: api.KindHTTP, Service: "web", RequestID: "r-imp", Method: "DELETE", Target: "/api/v1/pods/p",
		Meta: []api.KV{{Key: "impersonate-user", Value: "alice"}, {Key: "impersonate-group", Value: "dev"}}}
	refused := &api.Request{Kind: api.KindHTTP, Service: "nope", RequestID: "r-refused", Method: "GET", Target: "/"}
	start := time.Now()

	a := newAgent(AccessLogConfig{})
	a.logAccess(httpstream.Served{Head: ok, Status: 200}, 3, 5, start)
	var m map[string]any
	if err := json.Unmarshal(buf.Bytes(), &m); err != nil {
		t.Fatalf("%q: %v", buf.String(), err)
	}
	for k, want := range map[string]any{"message": "access", "level": "info", "request_id": "r-ok", "service": "web",
		"method": "GET", "path": "/x", "status": 200.0, "bytes_in": 3.0, "bytes_out": 5.0} {
		if m[k] != want {
			t.Errorf("%s = %v, want %v", k, m[k], want)
		}
	}
	if _, ok := m["duration"]; !ok || strings.Contains(buf.String(), "s3cret") {
		t.Errorf("line %s: no duration, or the query", buf.String())
	}

	buf.Reset()
	a = newAgent(AccessLogConfig{ErrorsOnly: true})
	a.logAccess(httpstream.Served{Head: ok, Status: 200}, 0, 0, start)
	if buf.Len() != 0 {
		t.Errorf("errors only: a success was logged: %s", buf.String())
	}
	a.logAccess(httpstream.Served{Head: imp, Status: 200}, 0, 0, start)
	a.logAccess(httpstream.Served{Head: refused, Refusal: api.Errorf(api.CodeServiceUnknown, "x")}, 0, 0, start)
	out := buf.String()
	if !strings.Contains(out, `"impersonate":"alice"`) || !strings.Contains(out, `"impersonate_groups":["dev"]`) {
		t.Errorf("errors only: the impersonated request was not logged: %s", out)
	}
	if !strings.Contains(out, `"request_id":"r-refused"`) || !strings.Contains(out, `"code":"service_unknown"`) || !strings.Contains(out, `"status":404`) {
		t.Errorf("errors only: the refusal was not logged: %s", out)
	}

	buf.Reset()
	a = newAgent(AccessLogConfig{Off: true})
	a.logAccess(httpstream.Served{Head: refused, Refusal: api.Errorf(api.CodeServiceUnknown, "x")}, 0, 0, start)
	if buf.Len() != 0 {
		t.Errorf("off: %s", buf.String())
	}
}
