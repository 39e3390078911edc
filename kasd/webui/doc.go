// Package webui is kasd's read-only web page: the fleet as this kasd sees it, updated live, and
// a graph view that runs a Prometheus query_range through the tunnel every few seconds and
// draws it with the round-trip time through qkas next to it.
//
// # Where it is served, and why
//
// The page is mounted on the client API listener under /ui/ (Mount), not on the observability
// listener. The graph view has to call the proxy API (/api/v1/agents/{agent}/proxy/...) with a
// client JWT anyway, and the fleet view shows what /metrics does not: agent ids, their replicas,
// remote addresses and services. On the API listener the page is the same origin as the API,
// so the browser sends no cross-origin request and needs no CORS; the feed is authenticated
// with the same JWT and scoped by its agents claim, like GET /api/v1/agents. The observability
// listener stays what it is: unauthenticated /metrics, /healthz, /readyz.
//
// The token is pasted into the page (or handed in the URL fragment, #token=..., which browsers
// never send to a server; the page removes it from the address bar at once), kept in
// sessionStorage (gone when the tab closes), and sent as an Authorization header from fetch;
// never in a cookie, so no other site can make the browser use it (no CSRF).
//
// # What it serves
//
//	GET /ui/                      the page (index.html), app.js, app.css: embedded (go:embed)
//	GET /ui/vendor/uPlot.*        the chart library, embedded from third_party/uplot
//	GET /ui/api/feed[?agent=S]    JSON Feed: kasd.Status for the caller's JWT, plus rates;
//	                              at most Config.MaxAgents agents, those whose id contains S
//
// Static files need no token: they hold no data. Every answer carries a Content-Security-Policy
// that allows scripts, styles and connections to this origin only, forbids framing, and
// nosniff. Nothing is fetched from the internet: the page works on an isolated network.
//
// # The feed
//
// Handler.ServeHTTP answers /ui/api/feed from Config.Status (kasd.Server.StatusFor) and a
// sampler shared by every viewer: cumulative request counters of the last samples (at most one
// per MinSampleGap, none older than RateWindow) turn into requests per second and errors per
// second by code. The page polls the feed every Config.PollInterval (1s; the page is told the
// interval in the feed), so a drained kasd shows as draining within about a second of its
// GoAway. The Handler owns no goroutine: everything happens in the request that asks.
package webui
