package main

import (
	"strings"
	"testing"
)

// The web page's URL is printed only when the fleet stays up to serve it: without DEMO_KEEP=1
// the demo shuts down right after, and the URL was dead when read.
func TestWebPageURLOnlyWhenKept(t *testing.T) {
	var b strings.Builder
	printWebPage(&b, false, "127.0.0.1:1", "tok")
	if strings.Contains(b.String(), "/ui/") || !strings.Contains(b.String(), "DEMO_KEEP=1") {
		t.Errorf("without DEMO_KEEP: %q", b.String())
	}
	b.Reset()
	printWebPage(&b, true, "127.0.0.1:1", "tok")
	if !strings.Contains(b.String(), "http://127.0.0.1:1/ui/#token=tok") {
		t.Errorf("with DEMO_KEEP: %q", b.String())
	}
}
