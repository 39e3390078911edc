package kasd_test

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/http/httptrace"
	"net/textproto"
	"strconv"
	"testing"
)

// A service's interim responses reach the client through agentd and kasd: 103 Early Hints
// with their Link fields, before the final response, which does not carry them. Both hops
// dropped them (agentd's upstream client read them away, kasd skipped the frames), and seven
// of them made the request fail with 502 (the upstream client allowed five; the stream
// protocol allows api.MaxInformational, 8). Found by a differential review.
func TestEarlyHintsReachClient(t *testing.T) {
	svc := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n, _ := strconv.Atoi(r.URL.Query().Get("n"))
		for i := range n {
			w.Header().Set("Link", fmt.Sprintf("</style%d.css>; rel=preload; as=style", i))
			w.WriteHeader(http.StatusEarlyHints)
		}
		w.Header().Del("Link")
		w.Header().Set("X-Final", "yes")
		fmt.Fprint(w, "done")
	}))
	defer svc.Close()
	e := newEnv(t)
	waitConnected(t, e.startAgent("alpha", "r1", map[string]string{"web": svc.URL}), 1)
	for _, n := range []int{1, 7} {
		var links []string
		trace := &httptrace.ClientTrace{Got1xxResponse: func(code int, h textproto.MIMEHeader) error {
			if code == http.StatusEarlyHints {
				links = append(links, h.Get("Link"))
			}
			return nil
		}}
		req, _ := http.NewRequest("GET", e.url(fmt.Sprintf("/api/v1/agents/alpha/proxy/web/page?n=%d", n)), nil)
		req = req.WithContext(httptrace.WithClientTrace(req.Context(), trace))
		req.Header.Set("Authorization", "Bearer "+e.token())
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body := readAll(t, resp)
		if resp.StatusCode != 200 || body != "done" || resp.Header.Get("X-Final") != "yes" || resp.Header.Get("Link") != "" {
			t.Errorf("n=%d: final %d %q, X-Final %q, Link %q", n, resp.StatusCode, body, resp.Header.Get("X-Final"), resp.Header.Get("Link"))
		}
		if len(links) != n {
			t.Errorf("n=%d: the client got %d 103s (%q)", n, len(links), links)
			continue
		}
		for i, l := range links {
			if want := fmt.Sprintf("</style%d.css>; rel=preload; as=style", i); l != want {
				t.Errorf("n=%d: 103 #%d Link %q, want %q", n, i, l, want)
			}
		}
	}
}
