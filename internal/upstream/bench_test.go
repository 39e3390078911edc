package upstream

import (
	"bufio"
	"bytes"
	"io"
	"net"
	"net/http"
	"net/url"
	"syscall"
	"testing"
	"time"
)

// BenchmarkRoundTrip is the client's cost per request (a GET as agentd sends it, a 1 KiB
// response read to EOF on a reused connection) against a canned-response server that does
// almost nothing, so that the figure is mostly the client's.
//
//	go test -run '^$' -bench RoundTrip -benchmem ./internal/upstream
func BenchmarkRoundTrip(b *testing.B) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	resp := []byte("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1024\r\n\r\n" + string(bytes.Repeat([]byte("x"), 1024)))
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				br := bufio.NewReader(c)
				for {
					// One head per request: read lines up to the blank one.
					for {
						line, err := br.ReadSlice('\n')
						if err != nil {
							return
						}
						if len(line) <= 2 {
							break
						}
					}
					if _, err := c.Write(resp); err != nil {
						return
					}
				}
			}()
		}
	}()
	u, _ := url.Parse("http://" + ln.Addr().String())
	up := New(u, Options{})
	defer up.Close()
	target, _ := url.Parse(u.String() + "/api/v1/query?query=up")
	hdr := http.Header{"User-Agent": {""}, "Accept": {"application/json"}, "X-Forwarded-For": {"10.0.0.1"}, "Traceparent": {"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}}
	b.ReportAllocs()
	start := cpuTime()
	defer func() {
		b.ReportMetric(float64((cpuTime()-start).Nanoseconds())/1e3/float64(b.N), "cpu-µs/op")
	}()
	for b.Loop() {
		req := &http.Request{Method: "GET", URL: target, Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1, Header: hdr}
		r, err := up.RoundTrip(req)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := io.Copy(io.Discard, r.Body); err != nil {
			b.Fatal(err)
		}
		r.Body.Close()
	}
}

// cpuTime is the process's CPU time (user + system), client and canned server together.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
