// Package autoflag is the value of a flag that takes "auto", "runtime" or a positive number:
// kasd's and agentd's --gomaxprocs (internal/procs) and kasd's --gogc (internal/gcpercent).
package autoflag
