package kubernetes

import (
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"k8s.io/client-go/rest"

	"github.com/qkas/qkas/agentd/kubernetes/kubetest"
)

// TestCARotation: with the CA given as a file (the in-cluster ca.crt), the upstream path
// re-reads it every caRefreshEvery, as client-go's transport does: a rotated bundle is used
// by the next connection once the period has passed, and not before.
func TestCARotation(t *testing.T) {
	st := kubetest.NewServer("tok")
	defer st.Close()
	var mu sync.Mutex
	clock := time.Now()
	now = func() time.Time { mu.Lock(); defer mu.Unlock(); return clock }
	defer func() { now = time.Now }()
	advance := func(d time.Duration) { mu.Lock(); clock = clock.Add(d); mu.Unlock() }

	caFile := filepath.Join(t.TempDir(), "ca.crt")
	if err := os.WriteFile(caFile, kubetest.WrongCA(), 0o600); err != nil {
		t.Fatal(err)
	}
	rc := &rest.Config{Host: st.URL, BearerToken: "tok", TLSClientConfig: rest.TLSClientConfig{CAFile: caFile}}
	base, _ := url.Parse(st.URL)
	rt, closeIdle, kind, err := apiTransport(rc, base, 4, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer closeIdle()
	if kind != transportUpstream {
		t.Fatalf("transport %s, want %s", kind, transportUpstream)
	}
	get := func() error {
		req, _ := http.NewRequest("GET", st.URL+"/version", nil)
		resp, err := rt.RoundTrip(req)
		if err != nil {
			return err
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		return resp.Body.Close()
	}
	if err := get(); err == nil {
		t.Fatal("verified the API server with a CA that did not sign its certificate")
	}
	if err := os.WriteFile(caFile, st.CAData(), 0o600); err != nil { // the bundle rotates
		t.Fatal(err)
	}
	advance(caRefreshEvery / 2)
	if err := get(); err == nil {
		t.Fatal("CA file re-read before its refresh period")
	}
	advance(caRefreshEvery)
	if err := get(); err != nil {
		t.Fatalf("after the refresh period: %v", err)
	}
}

// TestTransportFallsBackToClientGo: a rest.Config with its own Transport keeps it, and an API
// server reached through an HTTP proxy keeps client-go's http.Transport (upstream does not
// speak CONNECT); otherwise ordinary requests take upstream.
func TestTransportFallsBackToClientGo(t *testing.T) {
	base, _ := url.Parse("https://10.0.0.1:6443")
	var used bool
	own := roundTripperFunc(func(r *http.Request) (*http.Response, error) {
		used = true
		return &http.Response{StatusCode: 204, Body: http.NoBody, Request: r}, nil
	})
	proxy := func(*http.Request) (*url.URL, error) { return url.Parse("http://proxy.example:3128") }
	for _, tc := range []struct {
		name string
		rc   *rest.Config
		want string
	}{
		{"plain", &rest.Config{Host: base.String(), BearerToken: "tok"}, transportUpstream},
		{"own transport", &rest.Config{Host: base.String(), BearerToken: "tok", Transport: own}, transportClientGo},
		{"proxy", &rest.Config{Host: base.String(), BearerToken: "tok", Proxy: proxy}, transportClientGo},
	} {
		rt, closeIdle, kind, err := apiTransport(tc.rc, base, 4, nil)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		closeIdle()
		if kind != tc.want {
			t.Errorf("%s: transport %s, want %s", tc.name, kind, tc.want)
		}
		if tc.rc.Transport != nil {
			req, _ := http.NewRequest("GET", base.String()+"/version", nil)
			if _, err := rt.RoundTrip(req); err != nil || !used {
				t.Errorf("%s: the config's Transport was not used (%v)", tc.name, err)
			}
		}
	}
}
