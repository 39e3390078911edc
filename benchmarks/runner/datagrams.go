package runner

import (
	"bufio"
	"context"
	"errors"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/qkas/qkas/benchmarks/load"
)

// DatagramRun is the UDP cost of one route's small requests, over all rounds.
type DatagramRun struct {
	Route    string `json:"route"`
	Requests int    `json:"requests"` // sequential (c=1) successful requests
	// Datagrams: Udp InDatagrams of the whole network namespace while the requests ran;
	// IdleDatagrams: the same over as long an interval with no request (keep-alives and any
	// other traffic), right after.
	Datagrams     int64   `json:"datagrams"`
	IdleDatagrams int64   `json:"idle_datagrams"`
	Seconds       float64 `json:"seconds"`
	// PerRequest: the median over rounds of (datagrams − idle datagrams) / requests, so that
	// one burst of other traffic in one round does not count. Every datagram on loopback is
	// counted once, when delivered, whichever side sent it. TCP routes (direct, reverseproxy)
	// show the background: ≈ 0 on a quiet machine.
	PerRequest float64 `json:"per_request"`
	// RoundsPerRequest: each round's figure.
	RoundsPerRequest []float64 `json:"rounds_per_request"`
}

// udpDatagrams is the "Udp: InDatagrams" counter of snmp (/proc/<pid>/net/snmp): datagrams
// delivered to every UDP socket of that process's network namespace (on loopback every
// datagram sent is delivered there). InDatagrams, not OutDatagrams: the
// sender counts a GSO batch (quic-go's bulk sends) once, the receiver counts each datagram of
// it, as the wire would carry them (quic-go does not turn on UDP GRO, which would merge them
// again).
func udpDatagrams(snmp string) (int64, error) {
	f, err := os.Open(snmp)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	var names []string
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) == 0 || fields[0] != "Udp:" {
			continue
		}
		if names == nil { // the first Udp: line names the columns, the second has the values
			names = fields
			continue
		}
		for i, n := range names {
			if n == "InDatagrams" && i < len(fields) {
				return strconv.ParseInt(fields[i], 10, 64)
			}
		}
	}
	if err := sc.Err(); err != nil {
		return 0, err
	}
	return 0, errors.New(snmp + ": no Udp InDatagrams")
}

// measureDatagrams counts UDP datagrams per small request on each route: in every round and for
// every route (order alternating), DatagramRequests sequential requests, then as long with none;
// the idle count is subtracted, and the median round is the figure. Each route gets a fresh,
// warmed-up client.
func (e *env) measureDatagrams(ctx context.Context, routes []route, rounds int, snmp string) ([]DatagramRun, error) {
	if _, err := udpDatagrams(snmp); err != nil {
		return nil, err
	}
	fns := make([]load.Func, len(routes))
	for i, r := range routes {
		c := r.client(1)
		defer c.CloseIdleConnections()
		fns[i] = r.smallFunc(c)
		if _, err := load.Run(ctx, load.Options{Concurrency: 1, Requests: 50}, fns[i]); err != nil {
			return nil, err
		}
	}
	runs := make([]DatagramRun, len(routes))
	for i, r := range routes {
		runs[i].Route = r.name
	}
	for round := range rounds {
		for j := range routes {
			i := j
			if round%2 == 1 {
				i = len(routes) - 1 - j
			}
			d0, _ := udpDatagrams(snmp)
			res, err := load.Run(ctx, load.Options{Concurrency: 1, Requests: e.sizes.DatagramRequests}, fns[i])
			if err != nil {
				return nil, err
			}
			d1, _ := udpDatagrams(snmp)
			select {
			case <-ctx.Done():
				return nil, ctx.Err()
			case <-time.After(res.Elapsed):
			}
			d2, _ := udpDatagrams(snmp)
			r := &runs[i]
			r.Requests += res.OK()
			r.Datagrams += d1 - d0
			r.IdleDatagrams += d2 - d1
			r.Seconds += res.Elapsed.Seconds()
			if ok := res.OK(); ok > 0 {
				r.RoundsPerRequest = append(r.RoundsPerRequest, float64(d1-d0-(d2-d1))/float64(ok))
			}
		}
	}
	for i := range runs {
		r := &runs[i]
		if n := len(r.RoundsPerRequest); n > 0 {
			sorted := slices.Sorted(slices.Values(r.RoundsPerRequest))
			r.PerRequest = (sorted[(n-1)/2] + sorted[n/2]) / 2
		}
		e.logf("datagrams %-12s %.2f per request (%d requests, %d datagrams, %d idle)", r.Route, r.PerRequest, r.Requests, r.Datagrams, r.IdleDatagrams)
	}
	return runs, nil
}
