package api

import (
	"fmt"
	"strings"
	"testing"
)

func TestListNames(t *testing.T) {
	if got := ListNames(nil); got != "none" {
		t.Errorf("ListNames(nil) = %q", got)
	}
	if got := ListNames([]string{"a", "b"}); got != "a, b" {
		t.Errorf("ListNames(a, b) = %q", got)
	}
	for _, n := range []int{MaxListedNames, MaxListedNames + 1, 300} {
		names := make([]string, n)
		for i := range names {
			names[i] = fmt.Sprintf("n%03d-%s", i, strings.Repeat("x", 40))
		}
		got := ListNames(names)
		listed := strings.Count(got, "-") // one per listed name
		if len(got) > MaxListedBytes+32 {
			t.Errorf("%d names: %d bytes", n, len(got))
		}
		if listed < n && !strings.HasSuffix(got, fmt.Sprintf(" and %d more", n-listed)) {
			t.Errorf("%d names: %q does not say how many more", n, got)
		}
	}
}
