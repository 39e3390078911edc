package gitlab_test

import (
	"bytes"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/qkas/qkas/api"
	"github.com/qkas/qkas/gitlab"
	"github.com/qkas/qkas/gitlab/gitlabtest"
)

var testSecret = bytes.Repeat([]byte{0x42}, 32)

// fakeClock is an injectable clock for cache expiry.
type fakeClock struct {
	mu  sync.Mutex // guards now
	now time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

type env struct {
	gl     *gitlabtest.Server
	client *gitlab.Client
	reg    *prometheus.Registry
}

// newEnv starts a stand-in GitLab and a client to it; mod adjusts the client's config.
func newEnv(t *testing.T, mod func(*gitlab.Config)) *env {
	t.Helper()
	gl := gitlabtest.New(t, testSecret)
	cfg := gitlab.Config{URL: gl.URL, AuthSecret: testSecret, Version: "test"}
	if mod != nil {
		mod(&cfg)
	}
	reg := prometheus.NewRegistry()
	c, err := gitlab.New(cfg, reg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &env{gl: gl, client: c, reg: reg}
}

// counter returns the value of the counter name with exactly the given labels (0 if absent).
func (e *env) counter(t *testing.T, name string, labels map[string]string) float64 {
	t.Helper()
	mfs, err := e.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if labelsMatch(m, labels) {
				return m.GetCounter().GetValue()
			}
		}
	}
	return 0
}

func labelsMatch(m *dto.Metric, want map[string]string) bool {
	if len(m.GetLabel()) != len(want) {
		return false
	}
	for _, lp := range m.GetLabel() {
		if want[lp.GetName()] != lp.GetValue() {
			return false
		}
	}
	return true
}

func wantCode(t *testing.T, err error, code api.Code) *api.Error {
	t.Helper()
	var ae *api.Error
	if !errors.As(err, &ae) {
		t.Fatalf("error %v (%T) is not an *api.Error, want code %v", err, err, code)
	}
	if ae.Code != code {
		t.Fatalf("error code %v (%v), want %v", ae.Code, err, code)
	}
	return ae
}

// eventuallyCounter waits up to 5s for the counter to reach want and returns its value.
func (e *env) eventuallyCounter(t *testing.T, name string, labels map[string]string, want float64) float64 {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		v := e.counter(t, name, labels)
		if v >= want || time.Now().After(deadline) {
			return v
		}
		time.Sleep(5 * time.Millisecond)
	}
}
