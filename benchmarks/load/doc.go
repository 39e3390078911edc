// Package load is qkas's load generator: a fixed number of workers issue requests, either a
// fixed total or for a fixed time, and every request's start and latency is kept, so quantiles
// are exact (no histogram buckets) and a timeline can be rebuilt (failover).
//
// # Ownership
//
// Run starts Concurrency worker goroutines and returns when all of them have returned; nothing
// outlives the call. The request function is called concurrently by the workers; it must honour
// its context, which ends when Run's context ends or the duration elapses.
//
// Samples are kept in memory: 32 bytes each, so 10 million requests take about 320 MB. The
// benchmarks stay well below that.
package load
