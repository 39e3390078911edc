package auth

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// TestJWKSUnknownKidFetchDoesNotStallOthers: while a re-read caused by a
// made-up kid hangs at the provider, tokens with known kids and HS256 tokens
// (400, concurrently) verify without waiting for it; another unknown kid shares
// that read (no second GET) and is refused when it ends.
func TestJWKSUnknownKidFetchDoesNotStallOthers(t *testing.T) {
	signers := testSigners(t, 0)
	doc := jwksDoc(t, signers...)
	var hits atomic.Int64
	release := make(chan struct{})
	var releaseOnce sync.Once
	unblock := func() { releaseOnce.Do(func() { close(release) }) }
	blocked := make(chan struct{}, 1)
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if hits.Add(1) > 1 {
			blocked <- struct{}{}
			select {
			case <-release:
			case <-r.Context().Done():
				return
			}
		}
		w.Write(doc)
	}))
	defer srv.Close()
	defer unblock()
	pool := (&jwksServer{srv: srv}).pool()
	clock := &fakeClock{}
	clock.ns.Store(testEpoch.UnixNano())
	j, err := NewJWKS(t.Context(), JWKSConfig{URL: srv.URL, Issuer: jwksIssuer, RootCAs: pool,
		MinRefreshInterval: time.Minute, Timeout: time.Minute, Now: clock.now})
	if err != nil {
		t.Fatal(err)
	}
	v := testVerifier()
	v.Keys = j
	clock.advance(2 * time.Minute)

	madeUp := func(kid string) string {
		tok := jwt.NewWithClaims(signers[0].method, jwksClaims())
		tok.Header["kid"] = kid
		s, err := tok.SignedString(signers[0].priv)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	evilDone := make(chan error, 1)
	go func() { _, err := v.Verify(madeUp("made-up")); evilDone <- err }()
	select {
	case <-blocked:
	case <-time.After(30 * time.Second):
		t.Fatal("the made-up kid caused no read")
	}

	// Others, all while the read hangs: they must all finish before it is released.
	others := make(chan error, 400)
	var wg sync.WaitGroup
	for i := range 100 {
		c := jwksClaims()
		c.ID = fmt.Sprint(i)
		for _, s := range signers {
			tok := s.sign(t, c)
			wg.Go(func() {
				_, err := v.Verify(tok)
				others <- err
			})
		}
		hs := validClaims()
		hs.ID = fmt.Sprint(i)
		tok := mint(t, testKey, hs)
		wg.Go(func() {
			_, err := v.Verify(tok)
			others <- err
		})
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		unblock()
		<-done
		t.Fatal("verifications of known-kid and HS256 tokens waited for the made-up kid's JWKS read")
	}
	close(others)
	for err := range others {
		if err != nil {
			t.Fatalf("a valid token was refused: %v", err)
		}
	}
	// Another unknown kid waits for the read under way, and causes no other.
	otherMadeUpDone := make(chan error, 1)
	go func() { _, err := v.Verify(madeUp("another-made-up")); otherMadeUpDone <- err }()
	unblock()
	if err := <-evilDone; err == nil {
		t.Fatal("the made-up kid verified")
	}
	if err := <-otherMadeUpDone; err == nil {
		t.Fatal("another made-up kid verified")
	}
	if got := hits.Load(); got != 2 {
		t.Fatalf("GETs = %d, want 2 (start, one re-read)", got)
	}
}
