package cliconfig

import (
	"errors"
	"flag"
	"io"
	"time"
)

// ExplainDurations makes every time.Duration flag of fs say what it wants when it is given a
// value it cannot take: the flag package's own message for --drain-delay 5 is "parse error".
// Call it once the flags are defined and before Parse; the environment and the config file set
// flags through the same Set, so their errors say it too.
func ExplainDurations(fs *flag.FlagSet) {
	fs.VisitAll(func(f *flag.Flag) {
		g, ok := f.Value.(flag.Getter)
		if !ok {
			return
		}
		if _, ok := g.Get().(time.Duration); ok {
			f.Value = &durationValue{g}
		}
	})
}

// PrintDefaults is fs.PrintDefaults with the flags of ExplainDurations shown as the flag
// package shows durations ("-ttl duration", not "-ttl value").
func PrintDefaults(fs *flag.FlagSet) {
	var wrapped []*flag.Flag
	fs.VisitAll(func(f *flag.Flag) {
		if d, ok := f.Value.(*durationValue); ok {
			f.Value = d.Getter
			wrapped = append(wrapped, f)
		}
	})
	fs.PrintDefaults()
	for _, f := range wrapped {
		f.Value = &durationValue{f.Value.(flag.Getter)}
	}
}

// durationValue is a time.Duration flag whose Set explains a refused value.
type durationValue struct{ flag.Getter }

func (d *durationValue) Set(s string) error {
	if err := d.Getter.Set(s); err != nil {
		if _, perr := time.ParseDuration(s); perr != nil {
			return errors.New("want a duration with a unit, such as 30s, 500ms, 2m or 1h30m")
		}
		return err
	}
	return nil
}

// Unwrap is the flag's own value (valuePointer looks through it for aliases).
func (d *durationValue) Unwrap() flag.Value { return d.Getter }

// ShowUsage writes usage, what parsing the command line printed into a buffer, to stdout when
// err is flag.ErrHelp (help was asked for: it is the program's output, and the exit status is 0)
// and to stderr otherwise (a mistake, with the usage after it).
func ShowUsage(usage []byte, err error, stdout, stderr io.Writer) {
	out := stderr
	if errors.Is(err, flag.ErrHelp) {
		out = stdout
	}
	out.Write(usage) //nolint:errcheck // nowhere else to report it
}
