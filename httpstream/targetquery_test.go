package httpstream_test

import (
	"bufio"
	"net/http"
	"strings"
	"testing"

	"github.com/qkas/qkas/api"
	"github.com/qkas/qkas/httpstream"
)

// A query with raw bytes net/http's server accepts (UTF-8 above 0x7e, '#') is percent-encoded
// into a target a request frame can carry; the agent's or peer's decoder refused the frame
// (protocol_error). A valid query is kept as it is.
func TestTargetQuery(t *testing.T) {
	for in, want := range map[string]string{
		"":                "",
		"a=1&b=%C3%A9~!$": "a=1&b=%C3%A9~!$",
		"x=\xc3\xa9":      "x=%C3%A9",
		"x=a#b":           "x=a%23b",
		"\x7f#\xff":       "%7F%23%FF",
	} {
		if got := httpstream.TargetQuery(in); got != want {
			t.Errorf("TargetQuery(%q) = %q, want %q", in, got, want)
		}
	}
	r, err := http.ReadRequest(bufioReader("GET /p/%C3%A9?q=\xc3\xa9#x HTTP/1.1\r\nHost: h\r\n\r\n"))
	if err != nil {
		t.Fatal(err)
	}
	f := &api.Request{Kind: api.KindGitLab, Service: "m"}
	httpstream.SetHTTP(f, r)
	if want := "/p/%C3%A9?q=%C3%A9%23x"; f.Target != want {
		t.Errorf("SetHTTP target %q, want %q", f.Target, want)
	}
	b, err := api.EncodeFrame(nil, f)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := api.ParseFrame(b); err != nil {
		t.Errorf("the frame SetHTTP filled does not parse: %v", err)
	}
}

func bufioReader(s string) *bufio.Reader { return bufio.NewReader(strings.NewReader(s)) }
