// Package plot draws the benchmark figures as PNG with gonum.org/v1/plot: latency CDFs (with
// points at p50, p90, p99, p99.9), lines with a point at every value (p99 against loss, scale),
// quantiles per route, grouped bars (throughput) and scatter plots (the failover timeline).
//
// Figures are read at a glance and side by side: a series is coloured by the path its name
// mentions (Color: direct, raw-quic, reverseproxy, local/qkas, forwarded, h2-tcp; succeeded and
// failed), whatever its position, so that one colour is one path in every figure; line style
// and point shape say the quantile; axes carry 5–10 labelled round ticks (1-2-5 on log axes,
// never in exponent form) and their units; the legend sits outside the data. Each function
// writes one file and keeps no state; nothing here starts goroutines.
package plot
