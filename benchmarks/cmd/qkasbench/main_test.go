package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// TestBenchTargetsLeaveTheCheckoutClean: what `make bench` and `make bench-quick` write (a
// timestamped run directory, the --latest copy) is git-ignored, they rewrite no README, and the
// committed reference runs are not ignored.
func TestBenchTargetsLeaveTheCheckoutClean(t *testing.T) {
	root := filepath.Join("..", "..", "..")
	if _, err := exec.LookPath("git"); err != nil {
		t.Skip("no git")
	}
	if err := exec.Command("git", "-C", root, "rev-parse", "--git-dir").Run(); err != nil {
		t.Skip("not a git checkout")
	}
	mk, err := os.ReadFile(filepath.Join(root, "Makefile"))
	if err != nil {
		t.Fatal(err)
	}
	ignored := func(p string) bool {
		return exec.Command("git", "-C", root, "check-ignore", "-q", "--no-index", p).Run() == nil
	}
	writes := []string{"benchmarks/results/20991231T235959Z/REPORT.md", "benchmarks/results/20991231T235959Z/latency-cdf-c1.png"}
	runs := 0
	for _, line := range strings.Split(string(mk), "\n") {
		if !strings.Contains(line, "qkasbench") || strings.HasPrefix(strings.TrimSpace(line), "#") {
			continue
		}
		runs++
		if strings.Contains(line, "--readme") {
			t.Errorf("a bench target rewrites a README: %s", line)
		}
		if m := regexp.MustCompile(`--latest[ =](\S+)`).FindStringSubmatch(line); m != nil {
			writes = append(writes, m[1]+"/REPORT.md", m[1]+"/results.json")
		}
	}
	if runs < 2 {
		t.Fatalf("found %d qkasbench runs in the Makefile", runs)
	}
	for _, p := range writes {
		if !ignored(p) {
			t.Errorf("%s is not git-ignored: a benchmark run would dirty the checkout", p)
		}
	}
	refs, _ := filepath.Glob(filepath.Join(root, "benchmarks", "results", "reference-*", "REPORT.md"))
	if len(refs) == 0 {
		t.Fatal("no committed reference run in benchmarks/results/reference-*/")
	}
	for _, r := range refs {
		rel, _ := filepath.Rel(root, r)
		if ignored(rel) {
			t.Errorf("%s is git-ignored; reference runs are committed", rel)
		}
	}
}
