package suite

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// A peer link that times out between two kasd the fault did not touch is a host stall; so is
// an idle timeout on a link of a faulted kasd's new process (after "kasd started"), but not
// the links the fault itself broke (the killed or paused process's, or those to it).
func TestCollateralLinkLosses(t *testing.T) {
	dir := t.TempDir()
	logs := map[string][]string{
		"kasd-1": { // untouched: loses its link to kasd-3 (collateral) and to kasd-2 (the fault's)
			`{"level":"warn","instance":"kasd-1","peer":"kasd-2","cause":"timeout: no recent network activity","message":"peer link lost; x"}`,
			`{"level":"warn","instance":"kasd-1","peer":"kasd-3","cause":"timeout: no recent network activity","message":"peer link lost; x"}`,
		},
		"kasd-2": { // faulted: the old process's losses do not count, the new process's timeout does
			`{"level":"warn","instance":"kasd-2","peer":"kasd-1","cause":"timeout: no recent network activity","message":"peer link lost; x"}`,
			`{"level":"info","instance":"kasd-2","message":"kasd started"}`,
			`{"level":"warn","instance":"kasd-2","peer":"kasd-3","cause":"Application error 0x1 (remote): shutting_down","message":"peer link lost; x"}`,
			`{"level":"warn","instance":"kasd-2","peer":"kasd-1","cause":"timeout: no recent network activity","message":"peer link lost; x"}`,
		},
		"kasd-3": {},
	}
	f := &fleet{}
	marks := map[string]int64{}
	for _, id := range []string{"kasd-1", "kasd-2", "kasd-3"} {
		p := filepath.Join(dir, id+".log")
		if err := os.WriteFile(p, []byte(strings.Join(logs[id], "\n")+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		f.kasd = append(f.kasd, &kasdNode{id: id, proc: &proc{logPath: p}})
		marks[p] = 0
	}
	if n := f.collateralLinkLosses(marks, []string{"kasd-2"}); n != 2 {
		t.Errorf("collateral link losses %d, want 2 (kasd-1↔kasd-3, and the restarted kasd-2's timeout)", n)
	}
	if n := f.collateralLinkLosses(marks, []string{"kasd-2", "kasd-3"}); n != 1 {
		t.Errorf("with kasd-3 faulted too: %d, want 1", n)
	}
}
