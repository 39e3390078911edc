package agentd

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"net/url"
	"os"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/qkas/qkas/api"
	"github.com/qkas/qkas/internal/filewatch"
	"github.com/qkas/qkas/quic"
)

// Reloading the agent's services
//
// The services live in an immutable serviceSet behind an atomic pointer. A request takes the
// set once, when its stream starts, and uses it to the end: a reload never pulls a service
// from under a request in flight. ReloadServices builds the next set (reusing the *service, and
// so the pooled connections, of every service whose URL did not change), swaps it in and closes
// the old set's replaced channel.
//
// kasd learns an agent's services from the Hello at connect and routes only requests for
// those to a connection. So after a change each slot re-announces, make before break: it dials
// a new connection (to the same kasd address first) carrying the new list while the old one
// keeps serving, puts the new one in the slot, then drains the old one (GoAway to kasd, then
// in-flight requests finish, as on kasd's own GoAway). A slot that cannot dial keeps serving
// on its old connection with kasd's stale view and retries with backoff.

// serviceSet is one generation of the agent's services. Never modified after it is stored.
type serviceSet struct {
	byName map[string]*service
	names  []string // sorted, sent in Hello
	urls   []*urlService
	// replaced is closed when a newer set replaces this one: connections that announced this
	// set re-announce.
	replaced chan struct{}
}

// newServiceSet builds a set from URL services and handlers; a URL service whose name and URL
// are in prev keeps prev's *service (its connection pool).
func (a *Agent) newServiceSet(services map[string]*url.URL, handlers map[string]ServiceHandler, prev *serviceSet) *serviceSet {
	s := &serviceSet{byName: map[string]*service{}, replaced: make(chan struct{})}
	for name, u := range services {
		if old := prev.lookup(name); old != nil && old.url != nil && old.url.String() == u.String() {
			s.byName[name] = old
			s.urls = append(s.urls, old.handler.(*urlService))
		} else {
			us := newURLService(name, u, a.cfg, a.m)
			s.byName[name] = &service{name: name, handler: us, url: u}
			s.urls = append(s.urls, us)
		}
		s.names = append(s.names, name)
	}
	for name, h := range handlers {
		s.byName[name] = &service{name: name, handler: h}
		s.names = append(s.names, name)
	}
	sort.Strings(s.names)
	return s
}

func (s *serviceSet) lookup(name string) *service {
	if s == nil {
		return nil
	}
	return s.byName[name]
}

// urlServices returns the URL services of s by name.
func (s *serviceSet) urlServices() map[string]*url.URL {
	out := map[string]*url.URL{}
	for name, svc := range s.byName {
		if svc.url != nil {
			out[name] = svc.url
		}
	}
	return out
}

// ReloadServices replaces the agent's URL services (Config.Services; in-process handlers stay
// as configured) with what load returns. A load error or an invalid list keeps the current
// services; either way the result is logged and counted (agentd_config_reloads_total{result}).
// It is safe to call at any time, from any goroutine, before or while Run runs.
func (a *Agent) ReloadServices(load func() (map[string]*url.URL, error)) error {
	a.svcMu.Lock()
	defer a.svcMu.Unlock()
	services, err := load()
	if err == nil {
		err = errors.Join(validateServices(services, a.cfg.Handlers)...)
	}
	if err != nil {
		a.m.configReloads.WithLabelValues("error").Inc()
		a.log.Error().Err(err).Str("error_code", "config_invalid").Msg("reloading services failed; the agent keeps its current services")
		return fmt.Errorf("agentd: reload: %w", err)
	}
	old := a.svcs.Load()
	if maps.EqualFunc(old.urlServices(), services, func(x, y *url.URL) bool { return x.String() == y.String() }) {
		a.m.configReloads.WithLabelValues("unchanged").Inc()
		a.log.Info().Msg("services reloaded: unchanged")
		return nil
	}
	next := a.newServiceSet(services, a.cfg.Handlers, old)
	for _, us := range old.urls {
		if !slices.Contains(next.urls, us) {
			// Requests in flight keep their connection, closed as each ends (a request that
			// took the old set just before the swap still works, on a connection of its own):
			// returned to the retired pool, it stayed open until agentd exited.
			us.transport.Close()
		}
	}
	a.svcs.Store(next)
	close(old.replaced)
	a.m.configReloads.WithLabelValues("ok").Inc()
	a.log.Info().Strs("services", next.names).Strs("before", old.names).Msg("services reloaded; re-announcing them to kasd")
	return nil
}

// closeIdleServices closes the idle connections of every URL service (retired ones keep none).
func (a *Agent) closeIdleServices() {
	a.svcMu.Lock()
	defer a.svcMu.Unlock()
	for _, us := range a.svcs.Load().urls {
		us.transport.CloseIdleConnections()
	}
}

// reannounce replaces slot's connection old (which announced a set since replaced) by a new
// one announcing the current set, make before break, and returns the connection now in the
// slot: the new one, or old if ctx ended or old ended (its caller then sees why from old.wait).
// The first dial goes to tgt, old's address, so that the agent stays on the same kasd.
func (a *Agent) reannounce(ctx context.Context, slot int, dialer *quic.Dialer, old *agentConn, tgt target, wg *sync.WaitGroup) *agentConn {
	refusedToken := 0 // as runSlot's: a refused token or Hello waits 30s doubling
	for attempt := 0; ; attempt++ {
		var err error
		if attempt > 0 {
			tgt, _, err = a.nextTarget(ctx, slot)
		}
		var nc *agentConn
		if err == nil {
			nc, err = a.connect(ctx, dialer, tgt)
		}
		if err == nil {
			a.countAttempt(nil)
			a.setSlot(slot, nc)
			nc.log.Info().Strs("services", nc.announced.names).Msg("services re-announced to kasd on a new connection; draining the old one")
			wg.Go(func() { old.drain() })
			return nc
		}
		if ctx.Err() != nil {
			return old
		}
		a.countAttempt(err) // as a slot's dial: in agentd_connect_attempts_total{result} too
		if permanent(err) {
			refusedToken++
		}
		delay := reconnectDelay(a.cfg.Backoff, attempt, refusedToken, err, rand.Float64)
		a.connectFailed(err, tgt, attempt, delay)
		old.log.Warn().Msg("kasd keeps the old list of services until the agent reconnects")
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
		case <-old.goAway:
		case <-old.qc.Context().Done():
		case <-t.C:
			continue
		}
		t.Stop()
		return old
	}
}

// reloadDebounce gathers the events of one save (editors write, rename and chmod; Kubernetes
// swaps a ConfigMap's ..data symlink) into one reload.
const reloadDebounce = 200 * time.Millisecond

// WatchConfig calls reload on every signal from signals (SIGHUP) and whenever the file at path
// changes (path may be ""), until ctx ends. It watches path's directory, not the file
// (internal/filewatch), so that a file replaced by rename (editors, ConfigMap updates) keeps
// being watched; if the directory cannot be watched, it says so and only signals reload. It
// returns nil when ctx ends; the caller owns the goroutine that runs it.
func WatchConfig(ctx context.Context, path string, signals <-chan os.Signal, reload func(), log *zerolog.Logger) error {
	return filewatch.Watch(ctx, filewatch.Config{
		Paths:   []string{path},
		Signals: signals,
		Settle:  reloadDebounce,
		WatchError: func(err error) {
			// inotify limits, say: SIGHUP still reloads.
			log.Warn().Err(err).Str("config", path).Msg("watching the config file; SIGHUP still reloads")
		},
	}, func(t filewatch.Trigger) {
		if t == filewatch.TriggerSignal {
			log.Info().Str("signal", "SIGHUP").Msg("reloading services")
		} else {
			log.Info().Str("config", path).Str("trigger", string(t)).Msg("config file changed; reloading services")
		}
		reload()
	})
}

// validateServices checks a list of URL services and in-process handlers (Config.Validate and
// ReloadServices).
func validateServices(services map[string]*url.URL, handlers map[string]ServiceHandler) []error {
	var errs []error
	if n := len(services) + len(handlers); n == 0 {
		errs = append(errs, errors.New("at least one service is required (--service)"))
	} else if n > api.MaxServices {
		// kasd refuses such a Hello (bad_request): the agent would retry for ever.
		errs = append(errs, fmt.Errorf("%d services, kasd accepts at most %d (URL services and in-process handlers together)", n, api.MaxServices))
	}
	for name := range handlers {
		if _, dup := services[name]; dup {
			errs = append(errs, fmt.Errorf("service %q is both a URL and a handler", name))
		}
		if !serviceNameRE.MatchString(name) {
			errs = append(errs, fmt.Errorf("service name %q: must match %s", name, serviceNameRE))
		}
	}
	for name, u := range services {
		if !serviceNameRE.MatchString(name) {
			errs = append(errs, fmt.Errorf("service name %q: must match %s", name, serviceNameRE))
		}
		if u == nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			errs = append(errs, fmt.Errorf("service %q: URL must be http(s)://host[:port][/path]", name))
		}
	}
	return errs
}
