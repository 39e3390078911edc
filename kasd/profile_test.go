package kasd_test

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"runtime/pprof"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestProfileLocalRoute writes a CPU profile of kasd and agentd (in this process) serving 1 KiB
// GETs at concurrency 1 when QKAS_PROFILE names the output file. It measures nothing itself: the
// benchmarks in benchmarks/ do, with real processes.
func TestProfileLocalRoute(t *testing.T) {
	out := os.Getenv("QKAS_PROFILE")
	if out == "" {
		t.Skip("set QKAS_PROFILE=file to profile")
	}
	e := newEnv(t)
	body := strings.Repeat("x", 1024)
	svc := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, body) }))
	defer svc.Close()
	a := e.startAgent("alpha", "pod-1", map[string]string{"web": svc.URL})
	waitConnected(t, a, 1)
	tok := e.token()
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 256}}
	get := func() {
		req, _ := http.NewRequest("GET", e.url("/api/v1/agents/alpha/proxy/web/small"), nil)
		req.Header.Set("Authorization", "Bearer "+tok)
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	for range 500 {
		get()
	}
	c := 1
	if v := os.Getenv("QKAS_PROFILE_C"); v != "" {
		fmt.Sscan(v, &c)
	}
	f, _ := os.Create(out)
	defer f.Close()
	pprof.StartCPUProfile(f)
	start := time.Now()
	n := 5000 * c
	var wg sync.WaitGroup
	for range c {
		wg.Go(func() {
			for range n / c {
				get()
			}
		})
	}
	wg.Wait()
	pprof.StopCPUProfile()
	fmt.Printf("%d requests, %v each\n", n, time.Since(start)/time.Duration(n))
}

// TestConcurrentSmallGETs: 64 clients, 20 requests each, all answered.
func TestConcurrentSmallGETs(t *testing.T) {
	e := newEnv(t)
	body := strings.Repeat("x", 1024)
	svc := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, body) }))
	defer svc.Close()
	a := e.startAgent("alpha", "pod-1", map[string]string{"web": svc.URL})
	waitConnected(t, a, 1)
	tok := e.token()
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}, Timeout: 20 * time.Second}
	defer client.CloseIdleConnections()
	var wg sync.WaitGroup
	errs := make(chan error, 64*20)
	for range 64 {
		wg.Go(func() {
			for range 20 {
				req, _ := http.NewRequest("GET", e.url("/api/v1/agents/alpha/proxy/web/small"), nil)
				req.Header.Set("Authorization", "Bearer "+tok)
				resp, err := client.Do(req)
				if err != nil {
					errs <- err
					return
				}
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 200 || string(b) != body {
					errs <- fmt.Errorf("status %d body %d bytes", resp.StatusCode, len(b))
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}
