package runner

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"time"
)

// The target service, served in-process:
//
//	GET  /small    BodyBytes bytes
//	GET  /bytes?n= n bytes (downloads)
//	POST /sink     reads the body, answers its length (uploads)
func serviceHandler(bodyBytes int) http.Handler {
	small := make([]byte, bodyBytes)
	for i := range small {
		small[i] = 'a' + byte(i%26)
	}
	chunk := make([]byte, 256<<10)
	mux := http.NewServeMux()
	mux.HandleFunc("GET /small", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", strconv.Itoa(len(small)))
		_, _ = w.Write(small)
	})
	mux.HandleFunc("GET /bytes", func(w http.ResponseWriter, r *http.Request) {
		n, err := strconv.ParseInt(r.URL.Query().Get("n"), 10, 64)
		if err != nil || n < 0 {
			http.Error(w, "bad n", http.StatusBadRequest)
			return
		}
		w.Header().Set("Content-Length", strconv.FormatInt(n, 10))
		for n > 0 {
			k, err := w.Write(chunk[:min(n, int64(len(chunk)))])
			if err != nil {
				return
			}
			n -= int64(k)
		}
	})
	mux.HandleFunc("POST /sink", func(w http.ResponseWriter, r *http.Request) {
		n, err := io.Copy(io.Discard, r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		fmt.Fprintf(w, "%d\n", n)
	})
	return mux
}

// httpServer is an in-process HTTP server; close stops it and waits for its Serve goroutine.
type httpServer struct {
	srv  *http.Server
	ln   net.Listener
	done chan struct{}
}

func serveHTTP(ln net.Listener, h http.Handler) *httpServer {
	s := &httpServer{srv: &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}, ln: ln, done: make(chan struct{})}
	go func() { // owned by s: close waits for done
		defer close(s.done)
		if err := s.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			_ = err // the listener was closed under us; close reports nothing more useful
		}
	}()
	return s
}

func (s *httpServer) addr() string { return s.ln.Addr().String() }

func (s *httpServer) close() {
	if s == nil {
		return
	}
	_ = s.srv.Close()
	<-s.done
}
