package cliconfig

import (
	"flag"
	"fmt"
	"os"
	"sort"
	"strings"

	"go.yaml.in/yaml/v3"
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
//
// The file is read as YAML 1.2 nodes and every scalar reaches Flag.Set as it is written, as it
// would on the command line: under YAML 1.1 (what a map[string]any decode gives) off, on, yes,
// no, y and n are booleans, and "agent-listen-tcp: off" became "false". Bool flags still take
// those words (boolWords).
func ApplyBytes(fs *flag.FlagSet, name string, data []byte) error {
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return fmt.Errorf("config file %s: %w", name, err)
	}
	root := &doc
	if root.Kind == yaml.DocumentNode {
		if len(root.Content) == 0 {
			return nil
		}
		root = root.Content[0]
	}
	root = deref(root)
	switch {
	case root.Kind == 0, root.Kind == yaml.ScalarNode && root.Tag == "!!null":
		return nil // an empty file
	case root.Kind != yaml.MappingNode:
		return fmt.Errorf("config file %s: want a map of flag names to values", name)
	}
	values := map[string]*yaml.Node{}
	keys := make([]string, 0, len(root.Content)/2)
	for i := 0; i+1 < len(root.Content); i += 2 {
		kn := deref(root.Content[i])
		if kn.Kind != yaml.ScalarNode {
			return fmt.Errorf("config file %s: line %d: a key must be a flag name", name, kn.Line)
		}
		k := kn.Value
		if _, dup := values[k]; dup {
			return fmt.Errorf("config file %s: key %q given twice", name, k)
		}
		values[k] = root.Content[i+1]
		keys = append(keys, k)
	}
	sort.Strings(keys)
	given := setFlags(fs) // the command line and the environment win
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
		if err := setValue(f, values[k]); err != nil {
			return fmt.Errorf("config file %s: key %q: %w", name, k, err)
		}
	}
	return nil
}

// deref follows aliases (*a) to the node they name.
func deref(n *yaml.Node) *yaml.Node {
	for i := 0; n != nil && n.Kind == yaml.AliasNode && i < 16; i++ {
		n = n.Alias
	}
	if n == nil {
		return &yaml.Node{}
	}
	return n
}

func setValue(f *flag.Flag, n *yaml.Node) error {
	switch n = deref(n); n.Kind {
	case yaml.SequenceNode:
		for _, e := range n.Content {
			s, err := scalar(f, e)
			if err != nil {
				return err
			}
			if err := f.Value.Set(s); err != nil {
				return err
			}
		}
		return nil
	case yaml.MappingNode:
		entries := make([]string, 0, len(n.Content)/2)
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, err := scalar(nil, n.Content[i])
			if err != nil {
				return err
			}
			v, err := scalar(f, n.Content[i+1])
			if err != nil {
				return err
			}
			entries = append(entries, k+"="+v)
		}
		sort.Strings(entries)
		for _, e := range entries {
			if err := f.Value.Set(e); err != nil {
				return err
			}
		}
		return nil
	default:
		s, err := scalar(f, n)
		if err != nil {
			return err
		}
		return f.Value.Set(s)
	}
}

// boolWords are YAML 1.1's booleans that strconv.ParseBool does not take, for bool flags.
var boolWords = map[string]string{"y": "true", "yes": "true", "on": "true", "n": "false", "no": "false", "off": "false"}

// scalar is the text of a scalar node as written (null: ""); for a bool flag f, YAML 1.1's
// words for true and false are translated.
func scalar(f *flag.Flag, n *yaml.Node) (string, error) {
	n = deref(n)
	if n.Kind != yaml.ScalarNode {
		return "", fmt.Errorf("line %d: want a single value", n.Line)
	}
	if n.Tag == "!!null" {
		return "", nil
	}
	if f != nil {
		if b, ok := f.Value.(interface{ IsBoolFlag() bool }); ok && b.IsBoolFlag() {
			if w, ok := boolWords[strings.ToLower(n.Value)]; ok {
				return w, nil
			}
		}
	}
	return n.Value, nil
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
