package kasd_test

import (
	"net/http"
	"testing"
)

// A Qkas-Deadline that passes before the response head is answered 504 deadline_exceeded but
// never counted as kasd_limit_rejections_total{reason="qkas_deadline"} (a Qkas-Timeout is, as
// qkas_timeout; README: "qkas_timeout and qkas_deadline for the client's Qkas-Timeout and
// Qkas-Deadline").
func TestDeadlineBeforeHeadIsCounted(t *testing.T) {
	f := newFleetEnv(t, 1)
	svc := namedService(t, "alpha")
	a := f.startAgent("alpha", "pod", svc.URL, f.nodes[0:1], 1)
	waitConnected(t, a, 1)
	f.waitHolders("alpha", "kas-0")
	for _, h := range []string{"Qkas-Timeout", "Qkas-Deadline"} {
		req, _ := http.NewRequest("GET", f.nodes[0].api.URL+"/api/v1/agents/alpha/proxy/web/slow?sleep=2s", nil)
		req.Header.Set("Authorization", "Bearer "+f.token())
		req.Header.Set(h, "300ms")
		resp, err := f.client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body := readAll(t, resp)
		if resp.StatusCode != 504 {
			t.Fatalf("%s: %d %s", h, resp.StatusCode, body)
		}
		t.Logf("%s: %d %s", h, resp.StatusCode, body)
	}
	for _, reason := range []string{"qkas_timeout", "qkas_deadline"} {
		if n := counter(t, f.nodes[0].promReg, "kasd_limit_rejections_total", map[string]string{"reason": reason}); n != 1 {
			t.Errorf("kasd_limit_rejections_total{reason=%q} = %v, want 1", reason, n)
		}
	}
}
