//go:build linux && !race

package rawio

func raceReleaseMerge()     {}
func raceAcquire()          {}
func raceReadRange([]byte)  {}
func raceWriteRange([]byte) {}
