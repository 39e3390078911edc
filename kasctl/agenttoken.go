package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"

	"sigs.k8s.io/yaml"

	"github.com/qkas/qkas/auth"
)

func runAgentToken(_ context.Context, args []string, stdout, stderr io.Writer) error {
	fset := newFlagSet("agent-token", "[--token-out FILE] [--tokens-file FILE] NAME",
		`Makes a token for agent NAME (standalone mode). agentd presents the token
(--token-file); kasd keeps only its SHA-256 in --agent-tokens-file. The token
is shown once: it cannot be recovered from the file.`, stderr)
	tokenOut := fset.String("token-out", "", "write the token to `FILE` (mode 0600, must not exist) instead of printing it")
	tokensFile := fset.String("tokens-file", "", "append the entry to kasd's agent tokens `FILE` (created if missing; an existing id is refused unless --rotate)")
	rotate := fset.Bool("rotate", false, "with --tokens-file: add a second token for an agent that has one, to rotate it without disconnecting the agent (give agentd the new token, then remove the old entry)")
	pos, err := parseArgs(fset, args, 1)
	if err != nil {
		return err
	}
	if *rotate && *tokensFile == "" {
		return errors.New("--rotate needs --tokens-file")
	}
	name := pos[0]
	if err := auth.ValidateAgentID(name); err != nil {
		return err
	}

	// Check everything that can fail before writing anything, so a refused
	// command leaves no token file behind and no entry without a token.
	var existing []byte
	if *tokensFile != "" {
		existing, err = readTokensFile(*tokensFile, name, *rotate)
		if err != nil {
			return err
		}
	}
	token := auth.NewAgentToken()
	entry := auth.TokenEntry{ID: name, TokenSHA256: auth.TokenSHA256(token)}
	if *tokenOut != "" {
		// No trailing newline: the file is the token, whatever reads it.
		if err := writeNewFile(*tokenOut, token); err != nil {
			return err
		}
	}
	if *tokensFile != "" {
		if err := appendTokenEntry(*tokensFile, existing, entry); err != nil {
			if *tokenOut != "" {
				os.Remove(*tokenOut) // its hash is nowhere: useless
			}
			return err
		}
	}

	switch *tokenOut {
	case "":
		fmt.Fprintf(stdout, "# agent token for %s (shown once; give it to agentd via --token-file):\n%s\n", name, token)
	default:
		fmt.Fprintf(stdout, "# agent token for %s written to %s (give it to agentd via --token-file)\n", name, *tokenOut)
	}
	switch *tokensFile {
	case "":
		fmt.Fprint(stdout, "# add to kasd's --agent-tokens-file under \"agents:\":\n")
	default:
		fmt.Fprintf(stdout, "# added to %s:\n", *tokensFile)
	}
	fmt.Fprint(stdout, entryYAML(entry, ""))
	return nil
}

func entryYAML(e auth.TokenEntry, indent string) string {
	return fmt.Sprintf("%s- id: %s\n%s  token_sha256: %s\n", indent, e.ID, indent, e.TokenSHA256)
}

// readTokensFile returns the content of the agent tokens file at path (nil
// if it does not exist yet), after checking that it parses and has no agent
// called id.
func readTokensFile(path, id string, rotate bool) ([]byte, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	store, err := parseTokensFile(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	n := 0
	for _, e := range store.Entries() {
		if e.ID == id {
			n++
		}
	}
	switch {
	case n > 0 && !rotate:
		return nil, fmt.Errorf("%s already has an agent %q; to rotate its token, add a second one with --rotate (or remove its entry first)", path, id)
	case rotate && n == 0:
		return nil, fmt.Errorf("%s has no agent %q to rotate the token of", path, id)
	case n >= auth.MaxTokensPerAgent:
		return nil, fmt.Errorf("%s already has %d tokens for agent %q; remove the old entry (the rotation before) first", path, n, id)
	}
	return data, nil
}

// parseTokensFile parses a tokens file kasctl adds to: one that does not exist yet, is empty
// or holds only comments has no entries (kasd refuses such a file; kasctl writes the agents
// key into it).
func parseTokensFile(data []byte) (*auth.TokenStore, error) {
	s, err := auth.ParseTokens(data)
	if errors.Is(err, auth.ErrNoAgentsKey) {
		return auth.ParseTokens([]byte("agents: []\n"))
	}
	return s, err
}

var (
	agentsKey = regexp.MustCompile(`(?m)^agents:`)
	firstItem = regexp.MustCompile(`(?m)^([ \t]*)- `)
)

// appendTokenEntry adds e to the agent tokens file at path, whose current
// content is old (nil: the file does not exist). It appends text so that the
// file's comments and layout survive, then checks the result parses to the
// old entries plus e; when it does not (a layout such as "agents: []"), it
// rewrites the file in the canonical layout instead. The file is replaced
// atomically.
func appendTokenEntry(path string, old []byte, e auth.TokenEntry) error {
	oldStore, err := parseTokensFile(old)
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	want := append(oldStore.Entries(), e)

	var b bytes.Buffer
	b.Write(old)
	if len(old) > 0 && old[len(old)-1] != '\n' {
		b.WriteByte('\n')
	}
	indent := ""
	if loc := agentsKey.FindIndex(old); loc == nil {
		b.WriteString("agents:\n")
	} else if m := firstItem.FindSubmatch(old[loc[1]:]); m != nil {
		indent = string(m[1]) // follow the existing items' indentation
	}
	b.WriteString(entryYAML(e, indent))
	content := b.Bytes()

	if s, err := auth.ParseTokens(content); err != nil || !slices.Equal(s.Entries(), want) {
		content, err = yaml.Marshal(auth.TokensFile{Agents: want})
		if err != nil {
			return err
		}
	}
	return replaceFile(path, content)
}

// replaceFile writes content to path through a temporary file and a rename,
// so a reader (kasd reloading) never sees half a file. An existing file keeps
// its mode; a new one gets 0644: the tokens file holds only hashes, and kasd
// may run as another user.
func replaceFile(path string, content []byte) error {
	mode := fs.FileMode(0o644)
	if fi, err := os.Stat(path); err == nil {
		mode = fi.Mode().Perm()
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name()) // no-op after the rename
	_, err = tmp.Write(content)
	if err == nil {
		err = tmp.Chmod(mode)
	}
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return os.Rename(tmp.Name(), path)
}
