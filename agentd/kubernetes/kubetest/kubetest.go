// Package kubetest is a stand-in Kubernetes API server for tests of the kubernetes service. It
// checks what a real API server checks on a proxied request — TLS with its own CA, the bearer
// token it was given, well-formed impersonation headers, the upgrade handshake — and records
// every request so tests can assert on what arrived.
//
// It answers enough for client-go and kubectl: discovery (/api, /apis, /api/v1, /version), a
// pod list in any namespace, a GET of SlowPod that never answers, a watch on pods (one event, then a second after Server.NextEvent
// is signalled), and exec/attach/portforward upgrades: SPDY/3.1 (or any non-WebSocket upgrade)
// is echoed as raw bytes; a WebSocket speaking v5.channel.k8s.io echoes stdin to stdout as
// kubelet's remote command protocol frames it; any other WebSocket echoes messages.
package kubetest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"log"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"time"

	"github.com/gorilla/websocket"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/rest"
)

// SlowPod is a pod name whose GET (/api/v1/namespaces/{ns}/pods/slow) is never answered: the
// stand-in holds the request until the client gives up.
const SlowPod = "slow"

// Seen is what the stand-in recorded about one request.
type Seen struct {
	Method, Path, RawQuery string
	Proto                  string // "HTTP/1.1" or "HTTP/2.0"
	Authorization          string
	ImpersonateUser        string
	ImpersonateGroups      []string
	ImpersonateOther       []string // Impersonate-* header names other than User and Group
	Upgrade                string
}

// Server is a TLS API server stand-in with its own CA and HTTP/2 enabled.
type Server struct {
	*httptest.Server
	// Token is the bearer token requests must carry ("Bearer " + Token), else 401.
	Token string
	// NextEvent lets the pending watch send its second event; buffered.
	NextEvent chan struct{}
	// Quiet, set before the first request, keeps no record of requests (Requests and Last
	// report none): for benchmarks, whose requests would otherwise pile up.
	Quiet bool

	caPEM []byte

	mu   sync.Mutex // guards seen
	seen []Seen
}

// NewServer starts a stand-in that accepts token. Close it when done.
func NewServer(token string) *Server {
	s := &Server{Token: token, NextEvent: make(chan struct{}, 16)}
	var leaf tls.Certificate
	s.caPEM, leaf = newCA()
	s.Server = httptest.NewUnstartedServer(http.HandlerFunc(s.serve))
	s.Server.TLS = &tls.Config{Certificates: []tls.Certificate{leaf}}
	s.Server.EnableHTTP2 = true
	s.Server.Config.ErrorLog = log.New(io.Discard, "", 0) // failed handshakes are expected in tests
	s.Server.StartTLS()
	return s
}

// CAData is the PEM of the certificate clients must trust.
func (s *Server) CAData() []byte { return s.caPEM }

// RESTConfig is what an agent in this "cluster" would use: the stand-in's URL and CA, and its
// token as the ServiceAccount token.
func (s *Server) RESTConfig() *rest.Config {
	return &rest.Config{
		Host:            s.URL,
		BearerToken:     s.Token,
		TLSClientConfig: rest.TLSClientConfig{CAData: s.CAData()},
	}
}

// Requests returns the requests seen so far.
func (s *Server) Requests() []Seen {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Seen(nil), s.seen...)
}

// Last returns the last request whose path is p, or false.
func (s *Server) Last(p string) (Seen, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i := len(s.seen) - 1; i >= 0; i-- {
		if s.seen[i].Path == p {
			return s.seen[i], true
		}
	}
	return Seen{}, false
}

func (s *Server) record(r *http.Request) Seen {
	seen := Seen{
		Method: r.Method, Path: r.URL.Path, RawQuery: r.URL.RawQuery, Proto: r.Proto,
		Authorization:     r.Header.Get("Authorization"),
		ImpersonateUser:   r.Header.Get("Impersonate-User"),
		ImpersonateGroups: r.Header.Values("Impersonate-Group"),
		Upgrade:           r.Header.Get("Upgrade"),
	}
	for k := range r.Header {
		if strings.HasPrefix(k, "Impersonate-") && k != "Impersonate-User" && k != "Impersonate-Group" {
			seen.ImpersonateOther = append(seen.ImpersonateOther, k)
		}
	}
	if s.Quiet {
		return seen
	}
	s.mu.Lock()
	s.seen = append(s.seen, seen)
	s.mu.Unlock()
	return seen
}

func (s *Server) serve(w http.ResponseWriter, r *http.Request) {
	seen := s.record(r)
	if r.TLS == nil {
		status(w, http.StatusBadRequest, "BadRequest", "TLS required")
		return
	}
	if seen.Authorization != "Bearer "+s.Token {
		status(w, http.StatusUnauthorized, "Unauthorized", "Unauthorized")
		return
	}
	// The API server refuses impersonating groups (or extras) without a user.
	if seen.ImpersonateUser == "" && (len(seen.ImpersonateGroups) > 0 || len(seen.ImpersonateOther) > 0) {
		status(w, http.StatusInternalServerError, "InternalError", "requested impersonation without a user")
		return
	}
	parts := strings.Split(strings.Trim(r.URL.Path, "/"), "/")
	switch {
	case r.URL.Path == "/api":
		writeJSON(w, metav1.APIVersions{TypeMeta: metav1.TypeMeta{Kind: "APIVersions"}, Versions: []string{"v1"},
			ServerAddressByClientCIDRs: []metav1.ServerAddressByClientCIDR{{ClientCIDR: "0.0.0.0/0", ServerAddress: r.Host}}})
	case r.URL.Path == "/apis":
		writeJSON(w, metav1.APIGroupList{TypeMeta: metav1.TypeMeta{Kind: "APIGroupList", APIVersion: "v1"}, Groups: []metav1.APIGroup{}})
	case r.URL.Path == "/api/v1":
		writeJSON(w, metav1.APIResourceList{TypeMeta: metav1.TypeMeta{Kind: "APIResourceList", APIVersion: "v1"}, GroupVersion: "v1",
			APIResources: []metav1.APIResource{
				{Name: "pods", SingularName: "pod", Namespaced: true, Kind: "Pod", ShortNames: []string{"po"},
					Verbs: metav1.Verbs{"get", "list", "watch", "create", "update", "patch", "delete", "deletecollection"}},
				{Name: "pods/exec", Namespaced: true, Kind: "PodExecOptions", Verbs: metav1.Verbs{"create", "get"}},
			}})
	case r.URL.Path == "/version":
		writeJSON(w, map[string]string{"major": "1", "minor": "37", "gitVersion": "v1.37.2-kubetest"})
	case len(parts) == 5 && parts[0] == "api" && parts[1] == "v1" && parts[2] == "namespaces" && parts[4] == "pods":
		if q := r.URL.Query().Get("watch"); q == "true" || q == "1" {
			s.watchPods(w, r, parts[3])
			return
		}
		writeJSON(w, corev1.PodList{TypeMeta: metav1.TypeMeta{Kind: "PodList", APIVersion: "v1"},
			ListMeta: metav1.ListMeta{ResourceVersion: "10"},
			Items:    []corev1.Pod{pod(parts[3], "p1", "1"), pod(parts[3], "p2", "2")}})
	case len(parts) == 6 && parts[4] == "pods" && parts[5] == SlowPod:
		<-r.Context().Done() // never answers: for deadline tests
	case len(parts) == 7 && parts[4] == "pods" && (parts[6] == "exec" || parts[6] == "attach" || parts[6] == "portforward"):
		s.upgrade(w, r)
	default:
		status(w, http.StatusNotFound, "NotFound", "the server could not find the requested resource")
	}
}

func pod(ns, name, rv string) corev1.Pod {
	return corev1.Pod{TypeMeta: metav1.TypeMeta{Kind: "Pod", APIVersion: "v1"},
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, ResourceVersion: rv}}
}

// watchPods streams an ADDED event, waits for NextEvent (or the client to leave), streams a
// MODIFIED event and ends the watch.
func (s *Server) watchPods(w http.ResponseWriter, r *http.Request, ns string) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Transfer-Encoding", "chunked")
	w.WriteHeader(http.StatusOK)
	enc := json.NewEncoder(w)
	send := func(typ string, p corev1.Pod) {
		_ = enc.Encode(metav1.WatchEvent{Type: typ, Object: runtime.RawExtension{Raw: mustJSON(p)}})
		_ = http.NewResponseController(w).Flush()
	}
	send("ADDED", pod(ns, "p1", "11"))
	select {
	case <-s.NextEvent:
	case <-r.Context().Done():
		return
	}
	send("MODIFIED", pod(ns, "p1", "12"))
}

// upgrade answers an exec-style upgrade.
func (s *Server) upgrade(w http.ResponseWriter, r *http.Request) {
	up := r.Header.Get("Upgrade")
	if up == "" || !headerHasToken(r.Header, "Connection", "upgrade") {
		status(w, http.StatusBadRequest, "BadRequest", "Upgrade request required")
		return
	}
	if strings.EqualFold(up, "websocket") {
		s.websocket(w, r)
		return
	}
	// SPDY/3.1 as kubelet would answer it, then raw echo (a stand-in for the SPDY session).
	conn, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		status(w, http.StatusInternalServerError, "InternalError", "hijack: "+err.Error())
		return
	}
	defer conn.Close()
	fmt.Fprintf(brw, "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: %s\r\nX-Stream-Protocol-Version: %s\r\n\r\n",
		up, firstOr(r.Header.Values("X-Stream-Protocol-Version"), "v4.channel.k8s.io"))
	if brw.Flush() != nil {
		return
	}
	buf := make([]byte, 32<<10)
	for {
		n, err := brw.Read(buf)
		if n > 0 {
			if _, werr := conn.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

const protocolV5 = "v5.channel.k8s.io"

var upgrader = websocket.Upgrader{Subprotocols: []string{protocolV5, "echo"}, CheckOrigin: func(*http.Request) bool { return true }}

func (s *Server) websocket(w http.ResponseWriter, r *http.Request) {
	conn, err := upgrader.Upgrade(w, r, nil)
	if err != nil {
		return // Upgrade answered the error
	}
	defer conn.Close()
	for {
		typ, msg, err := conn.ReadMessage()
		if err != nil {
			return
		}
		if conn.Subprotocol() != protocolV5 {
			if conn.WriteMessage(typ, msg) != nil {
				return
			}
			continue
		}
		// Remote command v5: the first byte is the channel; 0 stdin, 1 stdout, 3 error,
		// 255 close (followed by the channel being closed).
		switch {
		case len(msg) > 0 && msg[0] == 0:
			if conn.WriteMessage(websocket.BinaryMessage, append([]byte{1}, msg[1:]...)) != nil {
				return
			}
		case len(msg) == 2 && msg[0] == 255 && msg[1] == 0:
			// stdin closed: the "process" exits successfully.
			_ = conn.WriteMessage(websocket.BinaryMessage, append([]byte{3}, mustJSON(metav1.Status{Status: metav1.StatusSuccess})...))
			_ = conn.WriteMessage(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, ""))
			return
		}
	}
}

func headerHasToken(h http.Header, name, token string) bool {
	for _, v := range h.Values(name) {
		for t := range strings.SplitSeq(v, ",") {
			if strings.EqualFold(strings.TrimSpace(t), token) {
				return true
			}
		}
	}
	return false
}

func firstOr(vs []string, def string) string {
	if len(vs) > 0 {
		return strings.TrimSpace(strings.Split(vs[0], ",")[0])
	}
	return def
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(mustJSON(v))
}

func status(w http.ResponseWriter, code int, reason, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_, _ = w.Write(mustJSON(metav1.Status{TypeMeta: metav1.TypeMeta{Kind: "Status", APIVersion: "v1"},
		Status: metav1.StatusFailure, Message: msg, Reason: metav1.StatusReason(reason), Code: int32(code)}))
}

func mustJSON(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return b
}

// WrongCA returns the PEM of a fresh CA that did not sign the stand-in's certificate.
func WrongCA() []byte {
	caPEM, _ := newCA()
	return caPEM
}

// newCA makes a CA and a serving certificate it signed for localhost and 127.0.0.1, so that
// each stand-in has its own CA (httptest's built-in certificate is the same everywhere).
func newCA() (caPEM []byte, leaf tls.Certificate) {
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		panic(err)
	}
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "kubetest CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		panic(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		panic(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "kube-apiserver"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		DNSNames: []string{"localhost", "kubernetes.default.svc"}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		panic(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}),
		tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}
