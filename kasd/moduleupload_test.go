package kasd_test

import (
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/qkas/qkas/agentd"
	"github.com/qkas/qkas/gitlab"
	"github.com/qkas/qkas/quic"
)

// trickle yields one 1 KiB chunk every interval, n times: an upload that keeps moving.
type trickle struct {
	n        int
	interval time.Duration
}

func (r *trickle) Read(p []byte) (int, error) {
	if r.n == 0 {
		return 0, io.EOF
	}
	time.Sleep(r.interval)
	r.n--
	return copy(p, strings.Repeat("x", 1024)), nil
}

// agentd's GitLabRoundTripper.ResponseHeaderTimeout (60 s by default) bounds the wait for
// GitLab's answer after the request's body: an upload that takes longer than it, moving all
// along, to a GitLab that answers once it has read the body (as Rails does), is not reset with
// deadline_exceeded while its bytes still flow.
func TestModuleUploadOutlastsHeaderTimeout(t *testing.T) {
	e := newGitLabEnv(t)
	e.gl.AddAgent("tok-up", gitlab.AgentInfo{AgentID: 901})
	a := e.startGitLabAgent("tok-up", "pod-1", quic.Backoff{})
	waitConnected(t, a.Agent, 1)
	e.gl.SetModuleHandler("up", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n, _ := io.Copy(io.Discard, r.Body)
		json.NewEncoder(w).Encode(map[string]int64{"length": n})
	}))
	rt := &agentd.GitLabRoundTripper{Agent: a.Agent, ResponseHeaderTimeout: time.Second}
	body := &trickle{n: 15, interval: 200 * time.Millisecond} // 3 s of upload, a chunk every 200 ms
	req, _ := http.NewRequest(http.MethodPost, "http://agent/modules/up/store", body)
	start := time.Now()
	resp, err := rt.RoundTrip(req)
	if err != nil {
		t.Fatalf("upload of 15 KiB, moving every 200 ms, failed after %v: %v", time.Since(start).Round(10*time.Millisecond), err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(b), `"length":15360`) {
		t.Fatalf("%d %s", resp.StatusCode, b)
	}
}
