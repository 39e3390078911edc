package httpserve

import (
	"bytes"
	"encoding/json"
	"testing"

	"github.com/rs/zerolog"
)

// net/http's and ReverseProxy's error lines become one JSON debug line each, not plain text on
// stderr among the daemons' JSON lines.
func TestErrorLogWritesJSONDebugLines(t *testing.T) {
	var buf bytes.Buffer
	l := ErrorLog(zerolog.New(&buf))
	l.Printf("httputil: ReverseProxy read error during body copy: %v", "unexpected EOF")
	var line struct{ Level, Message string }
	if err := json.Unmarshal(buf.Bytes(), &line); err != nil {
		t.Fatalf("not one JSON line: %q (%v)", buf.String(), err)
	}
	if line.Level != "debug" || line.Message != "httputil: ReverseProxy read error during body copy: unexpected EOF" {
		t.Errorf("%+v", line)
	}
}
