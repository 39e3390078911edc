package agentd

import (
	"crypto/tls"
	"fmt"
	"net/url"
	"strings"
	"testing"

	"github.com/qkas/qkas/api"
)

// A request for a service the agent does not offer is refused with service_unknown naming the
// services it does offer, sorted, and the list stays bounded however many there are.
func TestServiceUnknownListsServices(t *testing.T) {
	for _, n := range []int{2, api.MaxListedNames, 256} {
		svcs := map[string]*url.URL{}
		for i := range n {
			svcs[fmt.Sprintf("svc-%03d-%s", i, strings.Repeat("x", 50))] = &url.URL{Scheme: "http", Host: "127.0.0.1:1"}
		}
		a, err := New(Config{KasAddresses: []string{"127.0.0.1:1"}, Token: "t", TLS: &tls.Config{}, Services: svcs})
		if err != nil {
			t.Fatal(err)
		}
		e := a.checkRequest(a.svcs.Load(), &api.Request{Kind: api.KindHTTP, Service: "nope"})
		if e == nil || e.Code != api.CodeServiceUnknown {
			t.Fatalf("%d services: refusal %v", n, e)
		}
		if !strings.Contains(e.Message, `"nope"`) || !strings.Contains(e.Message, "svc-000-") || !strings.Contains(e.Message, "svc-001-") {
			t.Errorf("%d services: message %q does not name the service and the offered ones", n, e.Message)
		}
		if strings.Index(e.Message, "svc-000-") > strings.Index(e.Message, "svc-001-") {
			t.Errorf("%d services: not sorted: %q", n, e.Message)
		}
		if len(e.Message) > api.MaxListedBytes+200 {
			t.Errorf("%d services: message of %d bytes", n, len(e.Message))
		}
		if listed := strings.Count(e.Message, "svc-"); listed < n && !strings.Contains(e.Message, fmt.Sprintf("and %d more", n-listed)) {
			t.Errorf("%d services, %d listed: %q does not say how many more", n, listed, e.Message)
		}
	}
}
