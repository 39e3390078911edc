package api

import (
	"strconv"
	"strings"
)

// MaxListedNames and MaxListedBytes bound a list of names in an error message (the services
// an agent offers, in a service_unknown refusal): an agent may announce many services, and the
// message travels in an Error frame and an HTTP body to the client.
const (
	MaxListedNames = 32
	MaxListedBytes = 1024
)

// ListNames writes names, in their order, as "a, b, c": at most MaxListedNames names and
// about MaxListedBytes bytes, then " and N more"; "none" when there are none.
func ListNames(names []string) string {
	if len(names) == 0 {
		return "none"
	}
	var b strings.Builder
	for i, n := range names {
		if i == MaxListedNames || b.Len()+len(n)+2 > MaxListedBytes {
			b.WriteString(" and " + strconv.Itoa(len(names)-i) + " more")
			break
		}
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(n)
	}
	return b.String()
}
