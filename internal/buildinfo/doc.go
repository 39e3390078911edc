// Package buildinfo says which build a binary is: its version (set by the Makefile with
// -ldflags "-X main.version=…", else the module version Go recorded), its VCS revision and its
// Go version. The mains print it for --version and export it as the <binary>_build_info gauge
// (always 1; the build is in the labels), so a dashboard can tell which replicas run what.
//
// Nothing here starts goroutines or reads the environment.
package buildinfo
