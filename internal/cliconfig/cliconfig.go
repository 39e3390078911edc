package cliconfig

import (
	"flag"
	"fmt"
	"os"
	"sort"
	"strconv"

	"sigs.k8s.io/yaml"
)

// Apply reads the YAML file at path and sets every flag of fs that is named in it and was not
// already set on the command line or by ApplyEnv (nor an alias of one that was). It must be
// called after fs.Parse and ApplyEnv.
func Apply(fs *flag.FlagSet, path string) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("config file: %w", err)
	}
	return ApplyBytes(fs, path, data)
}

// ApplyBytes is Apply on a file's contents; name is used in error messages.
func ApplyBytes(fs *flag.FlagSet, name string, data []byte) error {
	var m map[string]any
	if err := yaml.Unmarshal(data, &m); err != nil {
		return fmt.Errorf("config file %s: %w", name, err)
	}
	given := setFlags(fs) // the command line and the environment win
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if k == "config" {
			return fmt.Errorf("config file %s: key %q cannot be set in a config file", name, k)
		}
		f := fs.Lookup(k)
		if f == nil {
			return fmt.Errorf("config file %s: unknown key %q (keys are flag names)", name, k)
		}
		if given.has(f) {
			continue
		}
		if err := setValue(f, m[k]); err != nil {
			return fmt.Errorf("config file %s: key %q: %w", name, k, err)
		}
	}
	return nil
}

func setValue(f *flag.Flag, v any) error {
	switch v := v.(type) {
	case []any:
		for _, e := range v {
			s, err := scalar(e)
			if err != nil {
				return err
			}
			if err := f.Value.Set(s); err != nil {
				return err
			}
		}
		return nil
	case map[string]any:
		keys := make([]string, 0, len(v))
		for k := range v {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			s, err := scalar(v[k])
			if err != nil {
				return err
			}
			if err := f.Value.Set(k + "=" + s); err != nil {
				return err
			}
		}
		return nil
	default:
		s, err := scalar(v)
		if err != nil {
			return err
		}
		return f.Value.Set(s)
	}
}

func scalar(v any) (string, error) {
	switch v := v.(type) {
	case string:
		return v, nil
	case bool:
		return strconv.FormatBool(v), nil
	case float64:
		return strconv.FormatFloat(v, 'f', -1, 64), nil
	case nil:
		return "", nil
	default:
		return "", fmt.Errorf("unsupported value %v (%T)", v, v)
	}
}

// StringList is a repeatable flag whose values may also be comma-separated.
type StringList []string

func (l *StringList) String() string { return fmt.Sprint([]string(*l)) }

// Set appends one value, or several separated by commas.
func (l *StringList) Set(s string) error {
	for _, p := range splitComma(s) {
		*l = append(*l, p)
	}
	return nil
}

func splitComma(s string) []string {
	var out []string
	start := 0
	for i := 0; i <= len(s); i++ {
		if i == len(s) || s[i] == ',' {
			if p := trimSpace(s[start:i]); p != "" {
				out = append(out, p)
			}
			start = i + 1
		}
	}
	return out
}

func trimSpace(s string) string {
	for len(s) > 0 && (s[0] == ' ' || s[0] == '\t') {
		s = s[1:]
	}
	for len(s) > 0 && (s[len(s)-1] == ' ' || s[len(s)-1] == '\t') {
		s = s[:len(s)-1]
	}
	return s
}
