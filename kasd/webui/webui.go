package webui

import (
	"bytes"
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"mime"
	"net/http"
	"path"
	"strings"
	"time"

	"github.com/qkas/qkas/api"
	"github.com/qkas/qkas/kasd"
	"github.com/qkas/qkas/third_party/uplot"
)

// Prefix is where Mount serves the page.
const Prefix = "/ui/"

// FeedPath is the JSON feed's path.
const FeedPath = Prefix + "api/feed"

//go:embed assets
var assets embed.FS

// Config configures a Handler.
type Config struct {
	// Status returns the status for an authenticated request, or an *api.Error
	// (unauthenticated). kasd.Server.StatusFor. Required.
	Status func(r *http.Request, opt kasd.StatusOptions) (*kasd.Status, error)
	// MaxAgents bounds the agents one feed lists (the page offers a filter to find the
	// others). Default kasd.DefaultStatusAgents (200).
	MaxAgents int
	// PollInterval is how often the page polls the feed. Default 1s; at most 2s.
	PollInterval time.Duration
	// RateWindow is the span over which rates are computed. Default 10s.
	RateWindow time.Duration
	// MinSampleGap is the least time between two samples the sampler keeps. Default 500ms.
	MinSampleGap time.Duration
}

func (c Config) withDefaults() Config {
	if c.PollInterval == 0 {
		c.PollInterval = time.Second
	}
	if c.RateWindow == 0 {
		c.RateWindow = 10 * time.Second
	}
	if c.MinSampleGap == 0 {
		c.MinSampleGap = 500 * time.Millisecond
	}
	if c.MaxAgents == 0 {
		c.MaxAgents = kasd.DefaultStatusAgents
	}
	return c
}

func (c Config) validate() error {
	var errs []error
	if c.Status == nil {
		errs = append(errs, errors.New("webui: a Status function is required"))
	}
	if c.PollInterval < 100*time.Millisecond || c.PollInterval > 2*time.Second {
		errs = append(errs, fmt.Errorf("webui: poll interval %v outside 100ms..2s", c.PollInterval))
	}
	if c.MaxAgents < 1 {
		errs = append(errs, fmt.Errorf("webui: max agents %d must be positive", c.MaxAgents))
	}
	if c.MinSampleGap <= 0 || c.RateWindow < 2*c.MinSampleGap {
		errs = append(errs, fmt.Errorf("webui: rate window %v must be at least twice the sample gap %v", c.RateWindow, c.MinSampleGap))
	}
	return errors.Join(errs...)
}

// Handler serves the page, its assets and the feed under Prefix. It works for any number of
// viewers at once and owns no goroutine.
type Handler struct {
	cfg     Config
	files   map[string]*asset // by path below Prefix ("" is index.html)
	sampler *sampler
}

// asset is one embedded file, ready to serve.
type asset struct {
	body  []byte
	ctype string
	etag  string
}

// New checks cfg and builds a Handler.
func New(cfg Config) (*Handler, error) {
	cfg = cfg.withDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	h := &Handler{cfg: cfg, files: map[string]*asset{}, sampler: newSampler(cfg.RateWindow, cfg.MinSampleGap)}
	if err := h.addFiles(assets, "assets", ""); err != nil {
		return nil, err
	}
	if err := h.addFiles(uplot.FS, ".", "vendor/"); err != nil {
		return nil, err
	}
	h.files[""] = h.files["index.html"]
	if h.files[""] == nil {
		return nil, errors.New("webui: index.html is not embedded")
	}
	return h, nil
}

// addFiles adds every file under dir of fsys, served at prefix + its path below dir.
func (h *Handler) addFiles(fsys fs.FS, dir, prefix string) error {
	return fs.WalkDir(fsys, dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := fs.ReadFile(fsys, p)
		if err != nil {
			return err
		}
		rel := strings.TrimPrefix(strings.TrimPrefix(p, dir), "/")
		ctype := mime.TypeByExtension(path.Ext(p))
		switch {
		case strings.HasSuffix(p, ".js"):
			ctype = "text/javascript; charset=utf-8" // mime's table varies with the host's files
		case ctype == "":
			ctype = "text/plain; charset=utf-8" // LICENSE
		}
		sum := sha256.Sum256(b)
		h.files[prefix+rel] = &asset{body: b, ctype: ctype, etag: `"` + hex.EncodeToString(sum[:12]) + `"`}
		return nil
	})
}

// contentSecurityPolicy allows this origin only: no inline script or style element, no other
// host, no framing. uPlot sets element styles from script (CSSOM), which style-src does not
// govern; the canvas is drawn, not loaded.
const contentSecurityPolicy = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; " +
	"connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

// ServeHTTP serves a request whose path starts with Prefix (or is Prefix without its slash).
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	hdr := w.Header()
	hdr.Set("Content-Security-Policy", contentSecurityPolicy)
	hdr.Set("X-Content-Type-Options", "nosniff")
	hdr.Set("X-Frame-Options", "DENY")
	hdr.Set("Referrer-Policy", "no-referrer")
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		hdr.Set("Allow", "GET, HEAD")
		api.WriteHTTPError(w, &api.Error{Code: api.CodeMethodNotAllowed, Message: r.Method + " is not allowed on the web page"})
		return
	}
	p := r.URL.Path
	if p == strings.TrimSuffix(Prefix, "/") {
		http.Redirect(w, r, Prefix, http.StatusMovedPermanently)
		return
	}
	if p == FeedPath {
		h.serveFeed(w, r)
		return
	}
	a := h.files[strings.TrimPrefix(p, Prefix)]
	if a == nil || !strings.HasPrefix(p, Prefix) {
		api.WriteHTTPError(w, api.Errorf(api.CodeNotFound, "no such page %q", p))
		return
	}
	hdr.Set("Content-Type", a.ctype)
	hdr.Set("ETag", a.etag)
	// Revalidate every time: a new kasd version serves new files at the same paths.
	hdr.Set("Cache-Control", "no-cache")
	http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(a.body))
}

// maxFilter bounds the agent filter: agent ids are at most 63 bytes.
const maxFilter = 63

// validFilter reports whether f may be part of an agent id: [a-zA-Z0-9._-], at most maxFilter.
func validFilter(f string) bool {
	if len(f) > maxFilter {
		return false
	}
	for i := 0; i < len(f); i++ {
		switch c := f[i]; {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9', c == '.', c == '_', c == '-':
		default:
			return false
		}
	}
	return true
}

func (h *Handler) serveFeed(w http.ResponseWriter, r *http.Request) {
	filter := r.URL.Query().Get("agent")
	if !validFilter(filter) {
		api.WriteHTTPError(w, api.Errorf(api.CodeBadRequest, "agent filter: at most %d of a-z A-Z 0-9 . _ -", maxFilter))
		return
	}
	st, err := h.cfg.Status(r, kasd.StatusOptions{MaxAgents: h.cfg.MaxAgents, Filter: filter})
	if err != nil {
		api.WriteHTTPError(w, err)
		return
	}
	feed := Feed{
		PollMillis: h.cfg.PollInterval.Milliseconds(),
		Status:     st,
		Rates:      h.sampler.rates(st),
	}
	b, err := json.Marshal(feed)
	if err != nil {
		api.WriteHTTPError(w, api.Errorf(api.CodeInternal, "encoding the feed: %v", err))
		return
	}
	hdr := w.Header()
	hdr.Set("Content-Type", "application/json")
	hdr.Set("Cache-Control", "no-store") // scoped to the caller's token
	_, _ = w.Write(append(b, '\n'))
}

// Mount returns a handler that serves ui for Prefix and everything else with next (the client
// API). It does not use http.ServeMux, whose path cleaning would redirect proxied paths such as
// a//b that the API passes to the service as they are.
func Mount(ui http.Handler, next http.Handler) http.Handler {
	bare := strings.TrimSuffix(Prefix, "/")
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if p := r.URL.Path; strings.HasPrefix(p, Prefix) || p == bare {
			ui.ServeHTTP(w, r)
			return
		}
		next.ServeHTTP(w, r)
	})
}
