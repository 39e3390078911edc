package load

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"syscall"
)

// NewClient returns an HTTP/1.1 client that keeps up to conns idle connections per host, so a
// run at concurrency conns never re-dials. dial may be nil (the default dialer).
func NewClient(conns int, dial func(ctx context.Context, network, addr string) (net.Conn, error)) *http.Client {
	tr := &http.Transport{
		MaxIdleConns:        conns * 2,
		MaxIdleConnsPerHost: conns * 2,
		DisableCompression:  true,
		ForceAttemptHTTP2:   false,
	}
	if dial != nil {
		tr.DialContext = dial
	}
	return &http.Client{Transport: tr}
}

// Get returns a Func that GETs url with the given headers, reads the whole body and expects 200.
func Get(c *http.Client, url string, header http.Header) Func {
	return func(ctx context.Context) error {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return err
		}
		for k, v := range header {
			req.Header[k] = v
		}
		resp, err := c.Do(req)
		if err != nil {
			return errors.New(ErrorKind(err))
		}
		_, err = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("http %d", resp.StatusCode)
		}
		if err != nil {
			return errors.New("body: " + ErrorKind(err))
		}
		return nil
	}
}

// ErrorKind classifies a transport error into a short, stable string for error counts.
func ErrorKind(err error) string {
	switch {
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, os.ErrDeadlineExceeded):
		return "timeout"
	case errors.Is(err, context.Canceled):
		return "canceled"
	case errors.Is(err, syscall.ECONNREFUSED):
		return "connection refused"
	case errors.Is(err, syscall.ECONNRESET):
		return "connection reset"
	case errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, io.EOF):
		return "unexpected EOF"
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return "timeout"
	}
	return "transport error"
}
