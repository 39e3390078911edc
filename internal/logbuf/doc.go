// Package logbuf buffers the daemons' log output and writes it in batches, as nginx's
// `access_log … buffer= flush=` does.
//
// kasd and agentd write an access line per proxied request. Written straight to stderr that
// is one write(2) per request and hop, and on a small VM that single blocking system call cost
// more than the request's socket calls together: it wakes the Go runtime's monitor thread and
// may hand the goroutine's P to another thread (internal/rawio explains the mechanism; stderr is
// a blocking pipe or file, so it cannot be made raw). Measured with the access log on, c=1 p50
// rose from ~510 to ~700 µs (docs/performance.md, "Log lines written in batches").
//
// A [Writer] copies each line into a buffer and one goroutine writes the buffer out at most
// FlushInterval after the first line of a batch arrived, or as soon as it holds MaxBuffer/2
// bytes. Nothing is dropped: a writer that finds MaxBuffer full waits for the flush (stderr
// that does not drain blocks the daemon as it did before). An idle daemon makes no wake-ups.
// What a crash loses is at most one interval's lines; Close writes out the rest.
//
// # Goroutines
//
// New starts the flushing goroutine; Close stops it after a last flush and waits for it. The
// caller that made the Writer owns it and must Close it.
package logbuf
