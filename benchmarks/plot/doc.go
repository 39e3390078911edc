// Package plot draws the benchmark figures as PNG with gonum.org/v1/plot: latency CDFs, lines
// (p99 against loss) and grouped bars (throughput). Each function writes one file and keeps no
// state; nothing here starts goroutines.
package plot
