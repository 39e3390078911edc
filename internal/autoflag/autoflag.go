package autoflag

import (
	"fmt"
	"strconv"
)

// Setting is a parsed value.
type Setting struct {
	Auto  bool // the daemon follows its load
	Fixed int  // > 0: exactly this; 0 with !Auto: the Go runtime's choice
}

// Auto is the "auto" setting.
var Auto = Setting{Auto: true}

// Parse reads "auto" (or ""), "runtime" or a positive number.
func Parse(s string) (Setting, error) {
	switch s {
	case "auto", "":
		return Auto, nil
	case "runtime":
		return Setting{}, nil
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 {
		return Setting{}, fmt.Errorf(`want "auto", "runtime" or a positive number, not %q`, s)
	}
	return Setting{Fixed: n}, nil
}

// Set implements flag.Value.
func (s *Setting) Set(v string) error {
	parsed, err := Parse(v)
	if err != nil {
		return err
	}
	*s = parsed
	return nil
}

func (s Setting) String() string {
	switch {
	case s.Auto:
		return "auto"
	case s.Fixed > 0:
		return strconv.Itoa(s.Fixed)
	}
	return "runtime"
}
