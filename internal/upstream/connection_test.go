package upstream

import (
	"bufio"
	"io"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"
)

// A service's Connection field that says close keeps, for the hop that passes the response on,
// the names of the other hop-by-hop fields it lists: net/http's ReadResponse deletes the whole
// field when it says close, and X-Foo (listed, so never to be sent on) reached kasd's client
// (found by an independent differential review).
func TestConnectionCloseKeepsListedFields(t *testing.T) {
	for _, tc := range []struct {
		name, head string
		want       []string
	}{
		{"close and a listed field", "HTTP/1.1 200 OK\r\nConnection: X-Foo, close\r\nX-Foo: secret\r\nContent-Length: 2\r\n\r\n", []string{"X-Foo, close"}},
		{"two fields, odd case", "HTTP/1.1 200 OK\r\ncONNECTION: X-Foo\r\nX-Foo: secret\r\nconnection: close\r\nContent-Length: 2\r\n\r\n", []string{"X-Foo", "close"}},
		{"after an interim response", "HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\nConnection: close, X-Foo\r\nX-Foo: secret\r\nContent-Length: 2\r\n\r\n", []string{"close, X-Foo"}},
		{"keep-alive: net/http keeps it", "HTTP/1.1 200 OK\r\nConnection: X-Foo\r\nX-Foo: secret\r\nContent-Length: 2\r\n\r\n", []string{"X-Foo"}},
		{"none", "HTTP/1.1 200 OK\r\nX-Connection: close\r\nContent-Length: 2\r\n\r\n", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			u, _ := rawService(t, func(*http.Request) string { return tc.head + "ok" })
			up := New(u, Options{DialTimeout: 10 * time.Second})
			defer up.CloseIdleConnections()
			req, _ := http.NewRequest("GET", u.String()+"/", nil)
			resp, err := up.RoundTrip(req)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if string(body) != "ok" || !slices.Equal(resp.Header["Connection"], tc.want) {
				t.Fatalf("body %q, Connection %q; want \"ok\", %q", body, resp.Header["Connection"], tc.want)
			}
		})
	}
}

func FuzzPeekConnection(f *testing.F) {
	f.Add("HTTP/1.1 200 OK\r\nConnection: X-Foo, close\r\nX-Foo: secret\r\n\r\nbody")
	f.Add("HTTP/1.1 200 OK\nconnection:close\n\nConnection: not-a-header")
	f.Add("Connection: x")
	f.Fuzz(func(t *testing.T, head string) {
		got := peekConnection(bufio.NewReader(strings.NewReader(head)))
		// Every value comes from a line of the head before its first empty line.
		end := len(head)
		if i := strings.Index(head, "\n\r\n"); i >= 0 {
			end = i
		}
		if i := strings.Index(head, "\n\n"); i >= 0 && i < end {
			end = i
		}
		for _, v := range got {
			if !strings.Contains(head[:min(len(head), end+1)], v) {
				t.Fatalf("value %q not in the head %q", v, head[:end])
			}
		}
	})
}
