package httpserve

import (
	"flag"
	"net/http"
	"net/http/pprof"
)

// DebugHandler serves net/http/pprof at /debug/pprof/. Profiles reveal memory contents and
// cost CPU: serve it only when an operator asks, on loopback unless told otherwise.
func DebugHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	return mux
}

// DebugFlags are --pprof and --pprof-listen.
type DebugFlags struct {
	Enabled bool   // --pprof, default off
	Listen  string // --pprof-listen, default a loopback address
}

// RegisterFlags adds --pprof and --pprof-listen (default defaultListen, a loopback address).
func (d *DebugFlags) RegisterFlags(fs *flag.FlagSet, defaultListen string) {
	fs.BoolVar(&d.Enabled, "pprof", false, "serve /debug/pprof/ on --pprof-listen")
	fs.StringVar(&d.Listen, "pprof-listen", defaultListen, "TCP address for /debug/pprof/ when --pprof is given (loopback by default: profiles expose memory and cost CPU)")
}

// DebugLimits are the pprof server's limits: operators only, and a CPU profile or trace may
// take its time.
var DebugLimits = Limits{MaxConnections: 8, MaxHeaderBytes: 16 << 10}
