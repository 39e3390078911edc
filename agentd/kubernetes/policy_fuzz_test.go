package kubernetes

import (
	"net/url"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"
)

var seedPolicies = []Policy{
	{Rules: []Rule{{Paths: []string{"/api", "/apis", "/version"}, Verbs: []string{"get", "list", "watch"}}}},
	{Rules: []Rule{{Paths: []string{"/api/v1/namespaces/team-a"}}, {Verbs: []string{"get"}}}},
	{Rules: []Rule{{Paths: []string{"/"}, Verbs: []string{"create"}}}},
	{Rules: []Rule{{}}},
}

func seedYAML(tb testing.TB, p Policy) []byte {
	b, err := yaml.Marshal(p)
	if err != nil {
		tb.Fatal(err)
	}
	return b
}

func FuzzRequestVerb(f *testing.F) {
	for _, s := range [][3]string{
		{"GET", "/api/v1/namespaces/a/pods", "watch=1"}, {"GET", "/api/v1/pods", ""}, {"DELETE", "/apis/apps/v1/namespaces/a/deployments", ""},
		{"POST", "/api/v1/namespaces/a/pods/p/exec", ""}, {"GET", "/api/v1/watch/pods", ""}, {"PUT", "/api/v1/namespaces/a", ""},
		{"OPTIONS", "/version", ""}, {"BREW", "/", ""}, {"HEAD", "/api/v1/namespaces", ""}, {"GET", "/api/v1/watch", ""},
		{"GET", "/apis/x/v1/namespaces/a/pods/p/portforward", "watch=false"}, {"PATCH", "//api//v1", "%zz"},
	} {
		f.Add(s[0], s[1], s[2])
	}
	f.Fuzz(func(t *testing.T, method, reqPath, rawQuery string) {
		q, _ := url.ParseQuery(rawQuery)
		v := requestVerb(method, reqPath, q)
		if v != "other" && !slices.Contains(knownVerbs, v) {
			t.Fatalf("requestVerb(%q, %q, %q) = %q: not a known verb (an unbounded metric label)", method, reqPath, rawQuery, v)
		}
		parts := strings.Split(strings.Trim(reqPath, "/"), "/")
		if v != "other" && len(parts) >= 6 && parts[0] == "api" && parts[2] == "namespaces" && parts[4] == "pods" && len(parts) >= 7 {
			switch parts[6] {
			case "exec", "attach", "portforward":
				if v != "create" {
					t.Fatalf("%s %s: %q, want create", method, reqPath, v)
				}
			}
		}
	})
}

func FuzzCanonicalPath(f *testing.F) {
	for _, s := range []string{"/", "", "/api", "/api/", "/api//v1", "/api/./v1", "/api/../x", "api", "//", "/a/b/", "/a/b//", "/.", "/..", "/a/.../b"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, p string) {
		got := canonicalPath(p)
		// Canonical: what path.Clean leaves alone, but for one trailing slash.
		want := strings.HasPrefix(p, "/") && (path.Clean(p) == p || path.Clean(p)+"/" == p)
		if got != want && p != "//" { // "//" is "/" with its trailing slash
			t.Fatalf("canonicalPath(%q) = %v, want %v", p, got, want)
		}
	})
}

// allowedByRef is decide written the slow and obvious way, on the cleaned path.
func allowedByRef(p *Policy, reqPath, verb string) bool {
	clean := path.Clean(reqPath)
	for _, r := range p.Rules {
		pathOK := len(r.Paths) == 0
		for _, prefix := range r.Paths {
			if prefix == "/" || clean == prefix || strings.HasPrefix(clean, prefix+"/") {
				pathOK = true
			}
		}
		if pathOK && (len(r.Verbs) == 0 || slices.Contains(r.Verbs, verb)) {
			return true
		}
	}
	return false
}

func FuzzDecide(f *testing.F) {
	for _, p := range seedPolicies {
		y := seedYAML(f, p)
		f.Add(y, "/api/v1/namespaces/team-a/pods", "list")
		f.Add(y, "/api/v1/namespaces/team-ab/pods", "get")
		f.Add(y, "/api/v1/namespaces/team-a/../team-b", "get")
		f.Add(y, "/version/", "get")
		f.Add(y, "/apis", "delete")
	}
	f.Fuzz(func(t *testing.T, policy []byte, reqPath, verb string) {
		var p Policy
		if yaml.UnmarshalStrict(policy, &p) != nil || p.Validate() != nil {
			return
		}
		d := p.decide(reqPath, verb)
		if d == allowed {
			if !canonicalPath(reqPath) {
				t.Fatalf("non-canonical %q allowed", reqPath)
			}
			if !allowedByRef(&p, reqPath, verb) {
				t.Fatalf("%s %q allowed by %+v, which allows no such request", verb, reqPath, p)
			}
			return
		}
		if canonicalPath(reqPath) && allowedByRef(&p, reqPath, verb) {
			t.Fatalf("%s %q refused (%s) by %+v, which allows it", verb, reqPath, d, p)
		}
	})
}

func FuzzLoadPolicy(f *testing.F) {
	for _, p := range seedPolicies {
		f.Add(seedYAML(f, p))
	}
	f.Add([]byte(`{"rules":[{"paths":["/api"],"verbs":["get"]}]}`))
	f.Add([]byte("rules: []\n"))
	f.Add([]byte("rules:\n- paths: [api/]\n  verbs: [GET]\n  extra: 1\n"))
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, data []byte) {
		file := filepath.Join(dir, "policy.yaml")
		if err := os.WriteFile(file, data, 0o600); err != nil {
			t.Fatal(err)
		}
		p, err := LoadPolicy(file)
		if err != nil {
			return
		}
		if p.Validate() != nil || len(p.Rules) == 0 {
			t.Fatalf("LoadPolicy accepted an invalid policy %+v", p)
		}
		// The writer's form loads to the same policy.
		if err := os.WriteFile(file, seedYAML(t, *p), 0o600); err != nil {
			t.Fatal(err)
		}
		again, err := LoadPolicy(file)
		if err != nil {
			t.Fatalf("re-serialised policy refused: %v", err)
		}
		if len(again.Rules) != len(p.Rules) {
			t.Fatalf("round trip: %+v -> %+v", p, again)
		}
		for i := range p.Rules {
			if !slices.Equal(p.Rules[i].Paths, again.Rules[i].Paths) || !slices.Equal(p.Rules[i].Verbs, again.Rules[i].Verbs) {
				t.Fatalf("round trip: %+v -> %+v", p, again)
			}
		}
	})
}
