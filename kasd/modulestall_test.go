package kasd_test

import (
	"bufio"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/qkas/qkas/agentd"
	"github.com/qkas/qkas/gitlab"
	"github.com/qkas/qkas/kasd"
	"github.com/qkas/qkas/quic"
)

// withModuleStall sets --module-stall-timeout.
func withModuleStall(d time.Duration) envOption {
	return func(c *kasd.Config) { c.ModuleStallTimeout = d }
}

// An agent that announced the body of its GitLab module request and stopped sending it gets
// 408 client_timeout once one read waited --module-stall-timeout, and GitLab's connection is
// let go; an upload that keeps moving, however slowly, is not cut.
func TestModuleStallUpload(t *testing.T) {
	const limit = time.Second
	e := newGitLabEnv(t, withModuleStall(limit))
	e.gl.AddAgent("tok-ms", gitlab.AgentInfo{AgentID: 401})
	a := e.startGitLabAgent("tok-ms", "pod-1", quic.Backoff{})
	waitConnected(t, a.Agent, 1)

	gitlabDone := make(chan error, 4)
	e.gl.SetModuleHandler("up", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, err := io.ReadAll(r.Body)
		gitlabDone <- err
		if err == nil {
			io.WriteString(w, "got "+string(b))
		}
	}))

	t.Run("stalled", func(t *testing.T) {
		// A raw connection: Go's client would wait for its body writer before returning.
		conn := dialSmallBuf(t, a.proxy.URL)
		io.WriteString(conn, "POST /modules/up/x HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n"+strings.Repeat("x", 100000))
		start := time.Now()
		conn.SetReadDeadline(start.Add(30 * time.Second))
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		if err != nil {
			t.Fatal(err)
		}
		body := readAll(t, resp)
		if resp.StatusCode != http.StatusRequestTimeout || !strings.Contains(body, "client_timeout") {
			t.Fatalf("stalled upload: %d %q, want 408 client_timeout", resp.StatusCode, body)
		}
		if d := time.Since(start); d < limit {
			t.Errorf("answered after %v, before the limit %v", d, limit)
		}
		select {
		case err := <-gitlabDone:
			if err == nil {
				t.Error("GitLab read a whole body the agent never sent")
			}
		case <-time.After(10 * time.Second):
			t.Fatal("GitLab's handler is still reading the stalled body")
		}
		waitCounter(t, e.reg, "kasd_limit_rejections_total", map[string]string{"reason": "module_stall"}, 1)
		waitCounter(t, e.glReg, "kasd_gitlab_module_requests_total", map[string]string{"module": "up", "code": "408"}, 1)
	})

	t.Run("slow but moving", func(t *testing.T) {
		pr, pw := io.Pipe()
		go func() {
			for i := range 6 { // 6 × limit/3: twice the limit in all, never a limit without a byte
				time.Sleep(limit / 3)
				if _, err := pw.Write([]byte{'a' + byte(i)}); err != nil {
					return
				}
			}
			pw.Close()
		}()
		req, _ := http.NewRequest("POST", a.proxy.URL+"/modules/up/y", pr)
		req.ContentLength = 6
		resp, err := noFollow.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		if body := readAll(t, resp); resp.StatusCode != http.StatusOK || body != "got abcdef" {
			t.Fatalf("slow upload: %d %q", resp.StatusCode, body)
		}
		if err := <-gitlabDone; err != nil {
			t.Fatal(err)
		}
		if n := counter(t, e.reg, "kasd_limit_rejections_total", map[string]string{"reason": "module_stall"}); n != 1 {
			t.Errorf("module_stall = %v after a slow upload, want still 1", n)
		}
	})
}

// An agent that stops reading GitLab's response to its module request while staying connected
// has the request ended once one write to it waited --module-stall-timeout: GitLab's handler
// is let go instead of blocking for as long as the agent stays.
func TestModuleStallDownload(t *testing.T) {
	e := newGitLabEnv(t, withModuleStall(500*time.Millisecond))
	e.gl.AddAgent("tok-md", gitlab.AgentInfo{AgentID: 402})
	a := e.startGitLabAgent("tok-md", "pod-1", quic.Backoff{})
	waitConnected(t, a.Agent, 1)

	gitlabDone := make(chan error, 1)
	e.gl.SetModuleHandler("down", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, err := io.Copy(w, &blob{n: 1 << 40}) // ends only when the write fails
		gitlabDone <- err
	}))

	// The agent's caller reads the head and a little, then nothing, with a small receive
	// buffer so that the agent's side fills quickly.
	conn := dialSmallBuf(t, a.proxy.URL)
	io.WriteString(conn, "GET /modules/down/blob HTTP/1.1\r\nHost: x\r\n\r\n")
	head := make([]byte, 64)
	if _, err := io.ReadFull(conn, head); err != nil || !strings.HasPrefix(string(head), "HTTP/1.1 200") {
		t.Fatalf("response head %q: %v", head, err)
	}

	select {
	case err := <-gitlabDone:
		if err == nil {
			t.Fatal("GitLab's endless body ended without an error")
		}
	case <-time.After(30 * time.Second):
		t.Fatal("GitLab's handler is still blocked on an agent that stopped reading")
	}
	waitCounter(t, e.reg, "kasd_limit_rejections_total", map[string]string{"reason": "module_stall"}, 1)
}

// GitLab that does not answer a module request gets the caller 504 deadline_exceeded after the
// agent's GitLabResponseHeaderTimeout (agentd's --gitlab-response-header-timeout), not after
// the 60 s default.
func TestModuleResponseHeaderTimeoutConfigured(t *testing.T) {
	const limit = 500 * time.Millisecond
	e := newGitLabEnv(t)
	e.gl.AddAgent("tok-rh", gitlab.AgentInfo{AgentID: 402})
	a := e.startGitLabAgent("tok-rh", "pod-1", quic.Backoff{}, func(c *agentd.Config) {
		c.GitLabResponseHeaderTimeout = limit
	})
	waitConnected(t, a.Agent, 1)
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	e.gl.SetModuleHandler("slow", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	client := &http.Client{Timeout: 20 * time.Second}
	start := time.Now()
	resp, err := client.Get(a.proxy.URL + "/modules/slow/x")
	if err != nil {
		t.Fatalf("no answer: %v", err)
	}
	body := readAll(t, resp)
	d := time.Since(start)
	if resp.StatusCode != http.StatusGatewayTimeout || !strings.Contains(body, "deadline_exceeded") {
		t.Fatalf("got %d %q, want 504 deadline_exceeded", resp.StatusCode, body)
	}
	if d < limit || d > 10*time.Second {
		t.Errorf("answered after %v, want the configured %v", d, limit)
	}
}
