package gitlab_test

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync/atomic"
	"testing"

	"github.com/qkas/qkas/api"
	"github.com/qkas/qkas/gitlab"
)

// FuzzAgentInfoAnswer feeds GitLab's agent_info answer to the client: an answer is either
// admitted with a positive agent id that the body holds, or refused as auth_unavailable
// (retryable, GitLab's fault), never anything else and never a panic.
func FuzzAgentInfoAnswer(f *testing.F) {
	for _, info := range []gitlab.AgentInfo{
		agent1,
		{ProjectID: 1, AgentID: 1, AgentName: "a"},
		{AgentID: 9223372036854775807, GitalyInfo: json.RawMessage(`{"address":"tcp://x"}`)},
	} {
		b, err := json.Marshal(info)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	for _, s := range []string{``, `{}`, `{"agent_id":0}`, `{"agent_id":-1}`, `{"agent_id":"42"}`, `{"agent_id":4.2}`,
		`{"agent_id":1e3}`, `null`, `[]`, `{"agent_id":1,"gitaly_info":nul}`, `{"agent_id":1}garbage`, `{"agent_id":99999999999999999999}`} {
		f.Add([]byte(s))
	}
	var body atomic.Pointer[[]byte]
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = w.Write(*body.Load())
	}))
	defer srv.Close()
	c, err := gitlab.New(gitlab.Config{URL: srv.URL, AuthSecret: testSecret, RateLimit: 1e9, Burst: 1 << 30}, nil)
	if err != nil {
		f.Fatal(err)
	}
	defer c.Close()
	var seq atomic.Int64
	f.Fuzz(func(t *testing.T, answer []byte) {
		body.Store(&answer)
		// A fresh token each time: the answer is not served from the cache.
		info, err := c.AgentInfo(t.Context(), "tok-"+strconv.FormatInt(seq.Add(1), 10))
		if err != nil {
			wantCode(t, err, api.CodeAuthUnavailable)
			return
		}
		var ref gitlab.AgentInfo
		if json.Unmarshal(answer, &ref) != nil || info.AgentID <= 0 || info.AgentID != ref.AgentID || info.AgentName != ref.AgentName {
			t.Fatalf("answer %q admitted as %+v", answer, info)
		}
		if info.ID() != strconv.FormatInt(info.AgentID, 10) {
			t.Fatalf("ID() = %q", info.ID())
		}
	})
}
