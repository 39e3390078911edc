package kasd_test

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"
)

// A service that answers 101 Switching Protocols to a request that did not ask to switch (or
// switches to another protocol than the one asked for, or names none) has not answered it:
// the client gets 502 service_unavailable, as httputil.ReverseProxy answers ("backend tried to
// switch protocol"), and its connection is not switched. agentd's Upgrade refused the switch
// and the handler returned without a word: the client got an empty 200 that looked complete.
func TestServiceSwitchesProtocolUnasked(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	defer func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	}()
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Go(func() {
				defer c.Close()
				req, err := http.ReadRequest(bufio.NewReader(c))
				if err != nil {
					return
				}
				proto := req.URL.Query().Get("switch")
				head := "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n"
				if proto != "" {
					head += "Upgrade: " + proto + "\r\n"
				}
				io.WriteString(c, head+"\r\nraw bytes of another protocol")
				time.Sleep(time.Second) // then close
			})
		}
	})
	e := newEnv(t)
	a := e.startAgent("alpha", "r1", map[string]string{"web": "http://" + ln.Addr().String()})
	waitConnected(t, a, 1)
	for _, tc := range []struct{ name, upgrade, query string }{
		{"not asked", "", "switch=h2c"},
		{"another protocol", "websocket", "switch=h2c"},
		{"none named", "websocket", ""},
	} {
		var hdr []string
		if tc.upgrade != "" {
			hdr = []string{"Connection", "Upgrade", "Upgrade", tc.upgrade}
		}
		resp := e.do("GET", "/api/v1/agents/alpha/proxy/web/x?"+tc.query, nil, hdr...)
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadGateway || resp.Header.Get("Qkas-Error") != "service_unavailable" {
			t.Errorf("%s: %d %q %q; want 502 service_unavailable", tc.name, resp.StatusCode, resp.Header.Get("Qkas-Error"), strings.TrimSpace(string(body)))
		}
	}
}
