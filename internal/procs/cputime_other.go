//go:build !unix

package procs

import "time"

func processCPUTime() (time.Duration, bool) { return 0, false }
