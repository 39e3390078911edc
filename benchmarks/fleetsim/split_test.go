package fleetsim

import (
	"bytes"
	"fmt"
	"path/filepath"
	"testing"
	"time"
)

func TestMaxAgents(t *testing.T) {
	for _, c := range []struct {
		nofile uint64
		want   int
	}{
		{20000, 15000}, // this machine's hard limit: the 50,000 step needs 4 processes
		{1 << 20, 786432},
		{1024, 768},
		{512, 256}, // a quarter is less than FDsReserved
		{256, 0},
		{0, 0},
	} {
		if got := MaxAgents(c.nofile); got != c.want {
			t.Errorf("MaxAgents(%d) = %d, want %d", c.nofile, got, c.want)
		}
	}
}

func TestSplit(t *testing.T) {
	for _, c := range []struct {
		n, per int
		want   []int // share sizes
	}{
		{50000, 15000, []int{12500, 12500, 12500, 12500}},
		{20000, 15000, []int{10000, 10000}},
		{15000, 15000, []int{15000}},
		{200, 70, []int{66, 67, 67}},
		{7, 0, []int{7}},
		{3, 1, []int{1, 1, 1}},
		{0, 10, nil},
	} {
		agents := make([]Agent, c.n)
		for i := range agents {
			agents[i] = Agent{ID: fmt.Sprintf("sim-%d", i), Token: "t"}
		}
		shares := Split(agents, c.per)
		var sizes []int
		seen := map[string]int{}
		for _, s := range shares {
			sizes = append(sizes, len(s))
			for _, a := range s {
				seen[a.ID]++
			}
		}
		if fmt.Sprint(sizes) != fmt.Sprint(c.want) {
			t.Errorf("Split(%d, %d): shares %v, want %v", c.n, c.per, sizes, c.want)
		}
		if len(seen) != c.n {
			t.Errorf("Split(%d, %d): %d distinct agents", c.n, c.per, len(seen))
		}
		for id, k := range seen {
			if k != 1 {
				t.Errorf("Split(%d, %d): %s in %d shares", c.n, c.per, id, k)
			}
		}
	}
}

func TestWriteTokensRoundTrip(t *testing.T) {
	in := []Agent{{"sim-0", "tok0"}, {"sim-1", "tok1"}}
	var b bytes.Buffer
	if err := WriteTokens(&b, in); err != nil {
		t.Fatal(err)
	}
	out, err := LoadTokens(&b)
	if err != nil || len(out) != 2 || out[0] != in[0] || out[1] != in[1] {
		t.Errorf("round trip: %+v, %v", out, err)
	}
}

func TestStatusFile(t *testing.T) {
	p := filepath.Join(t.TempDir(), "status.json")
	if _, err := ReadStatusFile(p); err == nil {
		t.Error("no error for a missing status")
	}
	for _, s := range []Status{
		{Agents: 67, Started: 10, Connected: 3, NoFile: 20000, Time: time.Unix(1, 0).UTC()},
		{Agents: 67, Started: 67, Connected: 67, NoFile: 20000, Time: time.Unix(2, 0).UTC(), Done: true},
	} {
		if err := WriteStatusFile(p, s); err != nil {
			t.Fatal(err)
		}
		got, err := ReadStatusFile(p)
		if err != nil || got != s {
			t.Errorf("ReadStatusFile = %+v, %v; want %+v", got, err, s)
		}
	}
	if m, _ := filepath.Glob(p + ".*"); len(m) != 0 {
		t.Errorf("temporary files left: %v", m)
	}
}
