package gitlab_test

import (
	"net/url"
	"path"
	"strings"
	"testing"

	"github.com/qkas/qkas/api"
	"github.com/qkas/qkas/gitlab"
)

func FuzzCleanModulePath(f *testing.F) {
	for _, s := range []string{
		"", "a", "a/b/", "x%20y", "..", "../x", "%2e%2e/x", "%252e%252e", "a%2fb", "a%5cb", `a\b`,
		"/evil.com/x", "http://x", "a//b", "%00", "a?b", "a#b", "..;/x", ".%2E", "%", "%%32%65",
	} {
		f.Add(s)
	}
	const prefix = "/api/v4/internal/kubernetes/modules/m"
	f.Fuzz(func(t *testing.T, raw string) {
		cleaned, err := gitlab.CleanModulePath(raw)
		if err != nil {
			if api.CodeOf(err) != api.CodeBadRequest {
				t.Fatalf("error %v has code %v", err, api.CodeOf(err))
			}
			return
		}
		full := "http://gitlab.example" + prefix + "/" + cleaned
		u, err := url.Parse(full)
		if err != nil {
			t.Fatalf("accepted %q but %q does not parse: %v", raw, full, err)
		}
		if u.Host != "gitlab.example" || u.RawQuery != "" || u.Fragment != "" {
			t.Fatalf("accepted %q changes the URL: %#v", raw, u)
		}
		// Once decoded (and once more, for servers that decode twice), then cleaned.
		for _, p := range []string{u.Path, unescapeOr(u.Path)} {
			c := path.Clean(p)
			if c != prefix && !strings.HasPrefix(c, prefix+"/") {
				t.Fatalf("accepted %q escapes the module prefix: %q -> %q", raw, p, c)
			}
			if strings.ContainsAny(p, `\`) {
				t.Fatalf("accepted %q contains a backslash once decoded: %q", raw, p)
			}
		}
	})
}

func unescapeOr(s string) string {
	u, err := url.PathUnescape(s)
	if err != nil {
		return s
	}
	return u
}

func FuzzValidateModule(f *testing.F) {
	for _, s := range []string{"", "a", "agent_configuration", "..", "A", "a/b", "a b", strings.Repeat("a", 65)} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, m string) {
		err := gitlab.ValidateModule(m)
		ok := len(m) >= 1 && len(m) <= 64
		for _, r := range m {
			if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '_' || r == '-') {
				ok = false
			}
		}
		if ok != (err == nil) {
			t.Fatalf("ValidateModule(%q) = %v, want ok=%v", m, err, ok)
		}
		if err != nil && api.CodeOf(err) != api.CodeBadRequest {
			t.Fatalf("code %v", api.CodeOf(err))
		}
	})
}

func TestCleanModulePath(t *testing.T) {
	for raw, ok := range map[string]bool{
		"":                   true,
		"a":                  true,
		"a/b/":               true,
		"a%20b":              true,
		"~user/x-y_z.json":   true,
		"a%zz":               false,
		"a%2":                false,
		"%":                  false,
		"a b":                false,
		"a?b":                false,
		"a#b":                false,
		"é":                  false,
		"a/./b":              false,
		"a/%2E/b":            false,
		"a%00b":              false,
		"%25%32%65%25%32%65": false, // %2e%2e once decoded, .. twice
		"/":                  false,
		"a//":                false,
		"javascript:x":       false,
		"1:x":                true, // not a scheme
	} {
		_, err := gitlab.CleanModulePath(raw)
		if (err == nil) != ok {
			t.Errorf("CleanModulePath(%q) = %v, want ok=%v", raw, err, ok)
		}
	}
}
