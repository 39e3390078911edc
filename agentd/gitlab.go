package agentd

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"io"
	"net/http"
	"net/http/httputil"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/qkas/qkas/api"
	"github.com/qkas/qkas/httpstream"
	"github.com/qkas/qkas/internal/httpserve"
	"github.com/qkas/qkas/quic"
)

// The agent side of GitLab's modules endpoint: in-cluster components send
// /modules/{module}/{path}?{query} to the agent, and the agent sends each request on a new
// stream of kind gitlab to kasd, which forwards it to
// {gitlab}/api/v4/internal/kubernetes/modules/{module}/{path}?{query} with this agent's token.
// kasd is the authority on what reaches GitLab (it cleans the path and sets Authorization, the
// JWT and Host); the agent checks only what it needs to open the stream: the module name.

// Defaults of GitLabRoundTripper.
const (
	// DefaultGitLabConnectWait is how long a request waits for a connection to kasd when the
	// agent has none (starting up, reconnecting) before it fails with agent_not_connected.
	DefaultGitLabConnectWait = 5 * time.Second
	// DefaultGitLabResponseHeaderTimeout bounds the wait for kasd's answer (Result frame and
	// GitLab's response header), counted from the request body's last byte sent (an upload
	// that takes longer goes on while kasd takes its bytes). It also bounds a kasd that never
	// accepts the stream (one without GitLab configured). Bodies then stream for as long as
	// the request's context allows.
	DefaultGitLabResponseHeaderTimeout = 60 * time.Second

	// gitlabConnectPoll is how often a waiting request looks for a live connection again.
	gitlabConnectPoll = 20 * time.Millisecond
	// gitlabOpenAttempts bounds retries when a picked connection dies before anything was sent.
	gitlabOpenAttempts = 3
	// maxGitLabModuleLen and maxGitLabModuleLabels bound the module name and the number of
	// distinct module label values in agentd_gitlab_requests_total (callers choose modules);
	// further modules are counted as "other".
	maxGitLabModuleLen    = 64
	maxGitLabModuleLabels = 32
)

// GitLabRoundTripper is an http.RoundTripper that sends each request to kasd's modules endpoint
// on a new stream of one of the agent's live connections to kasd (round-robin). The request's
// URL path must be /modules/{module}/{path...} with module made of [a-z0-9_-]; scheme and host
// are ignored. The zero value of each optional field means its default. Errors are *api.Error:
// bad_request for a path that is not a module path, agent_not_connected when the agent has had
// no connection to kasd for ConnectWait, kasd's typed refusal otherwise.
//
// A request body is written by a goroutine owned by the Agent: Agent.Run waits for it before it
// returns, and once Run is ending a request with a body fails with shutting_down. The goroutine
// ends when the body ends or fails, or when a write to the stream fails; the stream ends with
// the response, the request's context, or the connection. A body that blocks in Read therefore
// holds Run until the caller ends it (GitLabHandler's bodies end when its http.Server shuts down).
type GitLabRoundTripper struct {
	// Agent is the agent whose connections carry the requests. Required.
	Agent *Agent
	// ConnectWait: see DefaultGitLabConnectWait.
	ConnectWait time.Duration
	// ResponseHeaderTimeout: see DefaultGitLabResponseHeaderTimeout.
	ResponseHeaderTimeout time.Duration

	next atomic.Uint64 // round-robin position
}

// GitLabTransport returns a GitLabRoundTripper for a, with the response header timeout of a's
// Config (GitLabResponseHeaderTimeout).
func (a *Agent) GitLabTransport() http.RoundTripper {
	return &GitLabRoundTripper{Agent: a, ResponseHeaderTimeout: a.cfg.GitLabResponseHeaderTimeout}
}

// GitLabHandler serves /modules/{module}/{path}?{query} for in-cluster components by proxying
// each request through kasd to GitLab (a ReverseProxy over GitLabTransport). Both bodies stream;
// redirects and every other GitLab answer pass back as they are; hop-by-hop headers are dropped;
// the caller's Authorization, Cookie and Impersonate-* headers never leave the agent (kasd
// presents this agent's token to GitLab). Errors are qkas JSON errors (api.WriteHTTPError).
func (a *Agent) GitLabHandler() http.Handler {
	rt := a.GitLabTransport()
	proxy := &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			// The host is a placeholder: the stream goes to kasd whatever it says, and kasd
			// sets GitLab's. The path and query are kept byte for byte (RawPath) for kasd
			// to check.
			pr.Out.URL.Scheme = "http"
			pr.Out.URL.Host = "kasd"
			pr.Out.Host = ""
			// ReverseProxy cleaned the query before Rewrite (it drops a parameter with ';' or
			// a bad escape, and re-encodes and sorts the rest): GitLab gets it as sent.
			pr.Out.URL.RawQuery = pr.In.URL.RawQuery
			h := pr.Out.Header
			stripCredentials(h)
			h.Del("Cookie")
			// No protocol upgrades to GitLab: kasd would drop them anyway, and an upgrade
			// would keep the stream open after the response.
			h.Del("Connection")
			h.Del("Upgrade")
		},
		Transport:     rt,
		FlushInterval: -1,
		BufferPool:    bufferPool{},
		ErrorLog:      httpserve.ErrorLog(a.log),
		ModifyResponse: func(resp *http.Response) error {
			// The stream's response carries its length in its frame, not as a field:
			// without this, every answer of known length reached the caller chunked, and a
			// HEAD's without any.
			if resp.ContentLength >= 0 && resp.Header.Get("Content-Length") == "" {
				resp.Header.Set("Content-Length", strconv.FormatInt(resp.ContentLength, 10))
			}
			return nil
		},
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			if r.Context().Err() != nil && api.CodeOf(err) == api.CodeInternal {
				err = &api.Error{Code: api.CodeAgentFailed, Message: "request canceled", Err: err}
			}
			api.WriteHTTPError(w, err)
		},
	}
	labels := &moduleLabels{seen: map[string]bool{}}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rec := &httpstream.StatusRecorder{ResponseWriter: w}
		httpserve.KeepRawPath(r) // the caller's escapes (%2F) reach GitLab as sent
		module, _, err := splitGitLabPath(r.URL.EscapedPath())
		// Counted in a defer: ReverseProxy aborts with http.ErrAbortHandler when the client
		// goes away mid-body, and such requests must be counted too (as 499).
		defer func() {
			status := rec.Status()
			if r.Context().Err() != nil {
				status = api.CodeClientCanceled.HTTPStatus()
			}
			a.m.gitlabRequests.WithLabelValues(labels.label(module), strconv.Itoa(status)).Inc()
		}()
		if err != nil {
			api.WriteHTTPError(rec, err)
			return
		}
		if r.ContentLength != 0 {
			// GitLab (or kasd) may answer before the upload ends: an early 401 or 413, or
			// 408 when the caller stopped sending (kasd's --module-stall-timeout). Without
			// this, net/http's HTTP/1.1 server would wait, writing the response head, for the
			// read in progress on the body, and the caller would get no answer.
			_ = http.NewResponseController(w).EnableFullDuplex()
		}
		proxy.ServeHTTP(rec, r)
		// An early answer (GitLab's 401 or 413 before it read the upload) to a caller that
		// sent Expect: 100-continue (curl above 1 MiB) must not reset its connection.
		httpserve.LingerExpectContinue(w, r, time.Now().Add(httpserve.RSTAvoidance))
	})
}

// RoundTrip implements http.RoundTripper.
func (t *GitLabRoundTripper) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := t.roundTrip(req)
	if err != nil && req.Body != nil {
		req.Body.Close()
	}
	return resp, err
}

func (t *GitLabRoundTripper) roundTrip(req *http.Request) (*http.Response, error) {
	module, _, err := splitGitLabPath(req.URL.EscapedPath())
	if err != nil {
		return nil, err
	}
	ctx := req.Context()
	frame := &api.Request{Kind: api.KindGitLab, Service: module, RequestID: newRequestID()}
	httpstream.SetHTTP(frame, req)
	if len(frame.Header) > api.MaxHeaderFields {
		// kasd would refuse the head as a protocol error (a 502 blamed on the agent): the
		// caller's fault, said here, as api.EncodeFrame says it of a head over the size limit.
		return nil, api.Errorf(api.CodeTooLarge, "%d request header fields; at most %d reach GitLab", len(frame.Header), api.MaxHeaderFields)
	}
	if n := frame.PayloadLen(); n > api.MaxHeadSize {
		// Said before a stream is opened: a stream opened and reset for it was counted by
		// kasd as the agent's protocol error.
		return nil, api.Errorf(api.CodeTooLarge, "the request head (path, query and header fields) is %d bytes encoded; at most %d reach GitLab", n, api.MaxHeadSize)
	}
	body := httpstream.NewBody(req.Body, 0)
	headerTimeout := t.ResponseHeaderTimeout
	if headerTimeout == 0 {
		headerTimeout = DefaultGitLabResponseHeaderTimeout
	}
	for attempt := 0; ; attempt++ {
		c, err := t.pick(ctx)
		if err != nil {
			return nil, err
		}
		if !c.startOutbound() {
			continue // c began draining after it was picked; live no longer returns it
		}
		st, err := c.qc.OpenStreamSync(ctx)
		if err != nil {
			c.endOutbound()
			if ctx.Err() == nil && attempt+1 < gitlabOpenAttempts {
				continue // the connection died after it was picked; nothing was sent yet
			}
			return nil, httpstream.StreamError(err)
		}
		resp, err := httpstream.RoundTrip(ctx, quic.NewStreamConn(c.qc, st), frame, body, &httpstream.Options{
			ResponseHeaderTimeout: headerTimeout,
			Go:                    t.Agent.goOwned,
		})
		if err != nil || resp.Body == nil || resp.Body == http.NoBody || resp.StatusCode == http.StatusSwitchingProtocols {
			c.endOutbound()
			return resp, err
		}
		resp.Body = &outboundBody{ReadCloser: resp.Body, done: c.endOutbound}
		return resp, nil
	}
}

// outboundBody is the body of a GitLab response: the first error from Read (io.EOF included)
// or Close tells its connection the request is done (agentConn.endOutbound), so a draining
// connection waits for it.
type outboundBody struct {
	io.ReadCloser
	done func()
	once sync.Once
}

func (b *outboundBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if err != nil {
		b.once.Do(b.done)
	}
	return n, err
}

func (b *outboundBody) Close() error {
	err := b.ReadCloser.Close()
	b.once.Do(b.done)
	return err
}

// pick returns a live connection, round-robin over slots, waiting up to ConnectWait for one.
func (t *GitLabRoundTripper) pick(ctx context.Context) (*agentConn, error) {
	wait := t.ConnectWait
	if wait == 0 {
		wait = DefaultGitLabConnectWait
	}
	if c := t.live(); c != nil {
		return c, nil
	}
	// The agent has no event for "a slot connected"; polling at a short interval costs
	// nothing measurable and only happens while the agent is disconnected.
	deadline := time.NewTimer(wait)
	defer deadline.Stop()
	tick := time.NewTicker(gitlabConnectPoll)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			if errors.Is(ctx.Err(), context.DeadlineExceeded) {
				return nil, api.Errorf(api.CodeDeadlineExceeded, "deadline passed while waiting for a connection to kasd")
			}
			return nil, &api.Error{Code: api.CodeAgentFailed, Message: "request canceled", Err: ctx.Err()}
		case <-deadline.C:
			return nil, &api.Error{Code: api.CodeAgentNotConnected, Message: "the agent is not connected to kasd", RetryAfter: time.Second}
		case <-tick.C:
			if c := t.live(); c != nil {
				return c, nil
			}
		}
	}
}

// live returns the next live connection in slot order, or nil. Connections that got GoAway,
// are draining or whose QUIC connection ended are skipped.
func (t *GitLabRoundTripper) live() *agentConn {
	a := t.Agent
	a.mu.Lock()
	conns := make([]*agentConn, 0, len(a.slots))
	slots := make([]int, 0, len(a.slots))
	for slot := range a.slots {
		slots = append(slots, slot)
	}
	sort.Ints(slots)
	for _, slot := range slots {
		c := a.slots[slot]
		select {
		case <-c.goAway:
			continue
		case <-c.qc.Context().Done():
			continue
		default:
		}
		if c.draining() {
			continue
		}
		conns = append(conns, c)
	}
	a.mu.Unlock()
	if len(conns) == 0 {
		return nil
	}
	return conns[int((t.next.Add(1)-1)%uint64(len(conns)))]
}

// splitGitLabPath splits an escaped /modules/{module}/{rest} and checks the module name.
// The rest is kasd's to check.
func splitGitLabPath(p string) (module, rest string, err error) {
	p, ok := strings.CutPrefix(p, "/modules/")
	if !ok {
		return "", "", api.Errorf(api.CodeBadRequest, "path must be /modules/{module}/{path}")
	}
	module, rest, ok = strings.Cut(p, "/")
	if !ok {
		return "", "", api.Errorf(api.CodeBadRequest, "path must be /modules/{module}/{path}")
	}
	if module == "" || len(module) > maxGitLabModuleLen {
		return "", "", api.Errorf(api.CodeBadRequest, "module name must be 1 to %d bytes", maxGitLabModuleLen)
	}
	for i := 0; i < len(module); i++ {
		b := module[i]
		if !('a' <= b && b <= 'z' || '0' <= b && b <= '9' || b == '_' || b == '-') {
			return "", "", api.Errorf(api.CodeBadRequest, "module name may only contain [a-z0-9_-]")
		}
	}
	return module, rest, nil
}

func newRequestID() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// moduleLabels bounds the module label values of agentd_gitlab_requests_total.
type moduleLabels struct {
	mu   sync.Mutex // guards seen
	seen map[string]bool
}

func (l *moduleLabels) label(module string) string {
	if module == "" {
		return "invalid"
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.seen[module] {
		return module
	}
	if len(l.seen) >= maxGitLabModuleLabels {
		return "other"
	}
	l.seen[module] = true
	return module
}

// bufferPool lends httpstream's copy buffers to httputil.ReverseProxy.
type bufferPool struct{}

func (bufferPool) Get() []byte  { return *httpstream.GetBuffer() }
func (bufferPool) Put(b []byte) { httpstream.PutBuffer(&b) }
