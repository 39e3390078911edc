package cliconfig

import (
	"errors"
	"flag"
	"fmt"
	"math"
	"time"
)

// Positive refuses each named flag whose value is zero or negative. The libraries read a zero
// limit as "the default" (and some a negative one as "never"), which a value given on the command
// line, in the environment or in the file must not become in silence. The flags must be int,
// int64, uint64, float64 (NaN and infinities are refused too) or time.Duration flags of fs. It
// must be called after Apply.
func Positive(fs *flag.FlagSet, names ...string) error {
	return check(fs, names, "must be positive", func(v float64) bool { return v > 0 })
}

// NotNegative refuses each named flag whose value is negative (zero is meaningful: "none").
func NotNegative(fs *flag.FlagSet, names ...string) error {
	return check(fs, names, "must not be negative", func(v float64) bool { return v >= 0 })
}

// NotZero refuses each named flag whose value is zero (its negative values mean something, and
// zero would be taken for the default).
func NotZero(fs *flag.FlagSet, names ...string) error {
	return check(fs, names, "must not be 0", func(v float64) bool { return v != 0 })
}

func check(fs *flag.FlagSet, names []string, want string, ok func(float64) bool) error {
	var errs []error
	for _, name := range names {
		f := fs.Lookup(name)
		if f == nil {
			panic("cliconfig: no flag --" + name) // a programming error: the mains' tests catch it
		}
		var v float64
		switch x := f.Value.(flag.Getter).Get().(type) {
		case int:
			v = float64(x)
		case int64:
			v = float64(x)
		case uint64:
			v = float64(x)
		case float64:
			if math.IsNaN(x) || math.IsInf(x, 0) {
				errs = append(errs, fmt.Errorf("--%s must be a finite number, got %s", name, f.Value))
				continue
			}
			v = x
		case time.Duration:
			v = float64(x)
		default:
			panic(fmt.Sprintf("cliconfig: --%s is a %T flag", name, x))
		}
		if !ok(v) {
			errs = append(errs, fmt.Errorf("--%s %s, got %s", name, want, f.Value))
		}
	}
	return errors.Join(errs...)
}
