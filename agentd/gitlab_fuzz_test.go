package agentd

import (
	"strings"
	"testing"

	"github.com/qkas/qkas/gitlab"
)

func FuzzSplitGitLabPath(f *testing.F) {
	for _, s := range [][2]string{{"gitops", "repo/file"}, {"a-b_c9", ""}, {"m", "x%2F..%2Fy?q"}} {
		f.Add("/modules/" + s[0] + "/" + s[1])
	}
	for _, s := range []string{"", "/modules/", "/modules/m", "/modules//x", "/modules/M/x", "/modules/" + strings.Repeat("a", 65) + "/x", "/modules/a.b/x", "/modules/%61/x", "modules/m/x"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, p string) {
		module, rest, err := splitGitLabPath(p)
		if err != nil {
			if module != "" || rest != "" {
				t.Fatalf("%q: %q %q with error %v", p, module, rest, err)
			}
			return
		}
		// What the agent lets through, kasd accepts as a module name too.
		if err := gitlab.ValidateModule(module); err != nil {
			t.Fatalf("%q: module %q accepted here, refused by kasd: %v", p, module, err)
		}
		if want := "/modules/" + module + "/" + rest; want != p {
			t.Fatalf("%q split into %q %q, which join to %q", p, module, rest, want)
		}
	})
}
