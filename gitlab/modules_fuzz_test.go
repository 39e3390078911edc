package gitlab

import (
	"strings"
	"testing"
)

func FuzzSplitModulePath(f *testing.F) {
	for _, s := range [][2]string{{"gitops", "repo/file"}, {"a-b_c9", ""}, {"m", "x%2F..%2Fy"}} {
		f.Add("/modules/" + s[0] + "/" + s[1])
	}
	for _, s := range []string{"", "/modules/", "/modules/m", "/modules//x", "/modules/M/x", "/modules/" + strings.Repeat("a", 65), "/modules/a.b/x", "/modules/%61/x"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, p string) {
		module, rest, err := splitModulePath(p)
		if err != nil {
			return
		}
		if ValidateModule(module) != nil {
			t.Fatalf("%q: invalid module %q accepted", p, module)
		}
		joined := "/modules/" + module
		if strings.Contains(p[len("/modules/"):], "/") {
			joined += "/" + rest
		}
		if joined != p {
			t.Fatalf("%q split into %q %q, which join to %q", p, module, rest, joined)
		}
		// The writer's form splits the same.
		m2, r2, err := splitModulePath("/modules/" + module + "/" + rest)
		if err != nil || m2 != module || r2 != rest {
			t.Fatalf("rejoined %q: %q %q %v", p, m2, r2, err)
		}
	})
}
