package kubernetes

import (
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"

	metainternalversion "k8s.io/apimachinery/pkg/apis/meta/internalversion"
	metainternalversionscheme "k8s.io/apimachinery/pkg/apis/meta/internalversion/scheme"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func TestRequestVerb(t *testing.T) {
	for _, tc := range []struct {
		method, path, query, want string
	}{
		{"GET", "/api", "", "get"},
		{"GET", "/apis", "", "get"},
		{"GET", "/api/v1", "", "get"},
		{"GET", "/version", "", "get"},
		{"POST", "/version", "", "post"},
		{"HEAD", "/healthz", "", "get"},
		{"GET", "/api/v1/pods", "", "list"},
		{"GET", "/api/v1/namespaces", "", "list"},
		{"GET", "/api/v1/namespaces/default", "", "get"},
		{"DELETE", "/api/v1/namespaces/default", "", "delete"},
		{"GET", "/api/v1/namespaces/default/pods", "", "list"},
		{"GET", "/api/v1/namespaces/default/pods", "watch=true", "watch"},
		{"GET", "/api/v1/namespaces/default/pods", "watch=1", "watch"},
		// The API server treats any value but false and 0 as a watch, the empty one included;
		// so must the policy (TestRequestVerbWatchAsAPIServerDecodes).
		{"GET", "/api/v1/namespaces/default/pods", "watch=yes", "watch"},
		{"GET", "/api/v1/namespaces/default/pods", "watch=True", "watch"},
		{"GET", "/api/v1/namespaces/default/pods", "watch=false", "list"},
		{"GET", "/api/v1/namespaces/default/pods", "watch=0", "list"},
		{"GET", "/api/v1/namespaces/default/pods", "watch", "watch"},
		{"GET", "/api/v1/namespaces/default/pods", "watch=", "watch"},
		{"GET", "/api/v1/watch/namespaces/default/pods", "", "watch"},
		{"GET", "/api/v1/namespaces/default/pods/p1", "", "get"},
		{"GET", "/api/v1/namespaces/default/pods/p1/log", "follow=true", "get"},
		{"POST", "/api/v1/namespaces/default/pods", "", "create"},
		{"PUT", "/api/v1/namespaces/default/pods/p1", "", "update"},
		{"PATCH", "/api/v1/namespaces/default/pods/p1", "", "patch"},
		{"DELETE", "/api/v1/namespaces/default/pods/p1", "", "delete"},
		{"DELETE", "/api/v1/namespaces/default/pods", "", "deletecollection"},
		{"POST", "/api/v1/namespaces/default/pods/p1/exec", "command=sh", "create"},
		{"GET", "/api/v1/namespaces/default/pods/p1/exec", "command=sh", "create"}, // WebSocket exec
		{"GET", "/api/v1/namespaces/default/pods/p1/portforward", "", "create"},
		{"POST", "/api/v1/namespaces/default/pods/p1/attach", "", "create"},
		{"GET", "/apis/apps/v1/namespaces/default/deployments", "", "list"},
		{"GET", "/apis/apps/v1/namespaces/default/deployments/d", "", "get"},
		{"PATCH", "/apis/apps/v1/namespaces/default/deployments/d/scale", "", "patch"},
		{"GET", "/apis/apps/v1", "", "get"},
		{"GET", "/apis/apps", "", "get"},
		{"FROB", "/api/v1/pods", "", "other"},
	} {
		q, _ := url.ParseQuery(tc.query)
		if got := requestVerb(tc.method, tc.path, q); got != tc.want {
			t.Errorf("requestVerb(%s %s?%s) = %q, want %q", tc.method, tc.path, tc.query, got, tc.want)
		}
	}
}

// A GET of a collection is a watch exactly when the API server decodes its query as one: its
// RequestInfo (which RBAC authorizes) and its list handler read ListOptions with
// metainternalversionscheme.ParameterCodec. "?watch" and "?watch=" are watches there; the policy
// called them lists, and a policy allowing list but not watch let them stream.
func TestRequestVerbWatchAsAPIServerDecodes(t *testing.T) {
	for _, q := range []string{"", "watch", "watch=", "watch=true", "watch=1", "watch=yes", "watch=True", "watch=false", "watch=FALSE", "watch=0",
		"watch=&watch=false", "watch=false&watch=1", "watch=%20", "labelSelector=a&watch"} {
		v, err := url.ParseQuery(q)
		if err != nil {
			t.Fatal(err)
		}
		// As the API server's RequestInfoFactory decodes it.
		var opts metainternalversion.ListOptions
		if err := metainternalversionscheme.ParameterCodec.DecodeParameters(v, metav1.SchemeGroupVersion, &opts); err != nil {
			t.Fatalf("%q: %v", q, err)
		}
		want := "list"
		if opts.Watch {
			want = "watch"
		}
		if got := requestVerb("GET", "/api/v1/namespaces/team-a/pods", v); got != want {
			t.Errorf("GET pods?%s: verb %q, but the API server decodes watch=%v (%s)", q, got, opts.Watch, want)
		}
	}
}

func TestPolicyDecide(t *testing.T) {
	p := &Policy{Rules: []Rule{
		{Paths: []string{"/api", "/apis", "/version"}, Verbs: []string{"get", "list", "watch"}},
		{Paths: []string{"/api/v1/namespaces/team-a"}},
	}}
	if err := p.Validate(); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		path, verb string
		want       denial
	}{
		{"/api/v1/namespaces/default/pods", "list", allowed},
		{"/version", "get", allowed},
		{"/api/v1/namespaces/default/pods/p1", "delete", deniedVerb},
		{"/api/v1/namespaces/team-a/pods/p1", "delete", allowed},
		{"/api/v1/namespaces/team-a", "delete", allowed},
		{"/api/v1/namespaces/team-ab/pods/p1", "delete", deniedVerb}, // only rule 1's paths match
		{"/openapi/v2", "get", deniedPath},
		{"/versionx", "get", deniedPath},
		{"/api/v1/namespaces/team-a/../kube-system/secrets", "delete", deniedPathNotCanonic},
		{"/api/v1/namespaces/team-a/./pods", "delete", deniedPathNotCanonic},
		{"/api/v1/namespaces/team-a//pods", "delete", deniedPathNotCanonic},
		{"/api/v1/namespaces/team-a/pods/", "delete", allowed}, // trailing slash
	} {
		if got := p.decide(tc.path, tc.verb); got != tc.want {
			t.Errorf("decide(%s, %s) = %q, want %q", tc.path, tc.verb, got, tc.want)
		}
	}
	var none *Policy
	if got := none.decide("/anything/../at/all", "delete"); got != allowed {
		t.Errorf("nil policy: %q, want allowed", got)
	}
}

func TestLoadPolicy(t *testing.T) {
	dir := t.TempDir()
	write := func(name, body string) string {
		f := filepath.Join(dir, name)
		if err := os.WriteFile(f, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return f
	}
	p, err := LoadPolicy(write("ok.yaml", "rules:\n- paths: [/api, /apis]\n  verbs: [get, list, watch]\n- paths: [/api/v1/namespaces/team-a]\n"))
	if err != nil {
		t.Fatal(err)
	}
	if len(p.Rules) != 2 || p.Rules[0].Verbs[2] != "watch" || p.Rules[1].Paths[0] != "/api/v1/namespaces/team-a" {
		t.Fatalf("parsed %+v", p)
	}
	for name, body := range map[string]string{
		"unknown-field": "rules:\n- path: [/api]\n",
		"no-rules":      "rules: []\n",
		"bad-verb":      "rules:\n- verbs: [read]\n",
		"unclean-path":  "rules:\n- paths: [/api/../secrets]\n",
		"relative-path": "rules:\n- paths: [api]\n",
		"trailing":      "rules:\n- paths: [/api/]\n",
	} {
		if _, err := LoadPolicy(write(name+".yaml", body)); err == nil {
			t.Errorf("%s: no error", name)
		} else if !strings.Contains(err.Error(), name+".yaml") {
			t.Errorf("%s: error %q does not name the file", name, err)
		}
	}
}
