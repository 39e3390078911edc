package fleetsim

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"time"
)

// Status is what a fleet process reports about itself (cmd/fleetsim --status-file), so that a
// harness running the fleet as several processes can check each one's share and sum them.
type Status struct {
	Agents    int       `json:"agents"`    // agents this process runs (its tokens file's)
	Started   int       `json:"started"`   // of which started
	Connected int       `json:"connected"` // of which connected to kasd now
	NoFile    uint64    `json:"nofile"`    // its RLIMIT_NOFILE (soft, as raised)
	Time      time.Time `json:"time"`      // when the counts were taken
	Done      bool      `json:"done"`      // the last status, written as the process ends
}

// WriteStatusFile replaces path with s atomically (a reader sees the old status or the new one,
// never a part).
func WriteStatusFile(path string, s Status) error {
	b, err := json.Marshal(s)
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	_, err = tmp.Write(append(b, '\n'))
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), path)
	}
	if err != nil {
		_ = os.Remove(tmp.Name())
	}
	return err
}

// ReadStatusFile reads a status written by WriteStatusFile.
func ReadStatusFile(path string) (Status, error) {
	var s Status
	b, err := os.ReadFile(path)
	if err != nil {
		return s, err
	}
	if err := json.Unmarshal(b, &s); err != nil {
		return s, fmt.Errorf("fleetsim: status %s: %w", path, err)
	}
	return s, nil
}
