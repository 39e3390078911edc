//go:build linux && race

package rawio

import (
	"runtime"
	"unsafe"
)

// ioSync gives the race detector the happens-before edge that the syscall package gives for
// net's reads and writes: a write releases it, a read acquires it. Raw calls are invisible to
// the detector otherwise, as are the kernel's reads and writes of the buffers.
var ioSync int64

func raceReleaseMerge() { runtime.RaceReleaseMerge(unsafe.Pointer(&ioSync)) }

func raceAcquire() { runtime.RaceAcquire(unsafe.Pointer(&ioSync)) }

func raceReadRange(b []byte) {
	if len(b) > 0 {
		runtime.RaceReadRange(unsafe.Pointer(&b[0]), len(b))
	}
}

func raceWriteRange(b []byte) {
	if len(b) > 0 {
		runtime.RaceWriteRange(unsafe.Pointer(&b[0]), len(b))
	}
}
