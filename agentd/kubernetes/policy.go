package kubernetes

import (
	"errors"
	"fmt"
	"net/url"
	"os"
	"path"
	"slices"
	"strings"

	"sigs.k8s.io/yaml"
)

// Policy limits which API requests the service passes to the API server. A request is allowed
// if at least one rule allows it. A nil *Policy allows everything (the cluster's RBAC for the
// agent's identity still applies).
//
// The YAML form (LoadPolicy):
//
//	rules:
//	- paths: [/api, /apis, /version]   # discovery, read-only
//	  verbs: [get, list, watch]
//	- paths: [/api/v1/namespaces/team-a, /apis/apps/v1/namespaces/team-a]
type Policy struct {
	Rules []Rule `json:"rules"`
}

// Rule allows requests whose path matches one of Paths and whose verb is one of Verbs.
type Rule struct {
	// Paths are URL path prefixes matched on whole segments: "/api/v1/namespaces/team-a" allows
	// that path and everything below it, but not "/api/v1/namespaces/team-ab". Note that "/api"
	// covers the whole core API group. Empty: any path.
	Paths []string `json:"paths,omitempty"`
	// Verbs are Kubernetes authorization verbs (get, list, watch, create, update, patch, delete,
	// deletecollection) or, for non-resource paths such as /version, the lower-case HTTP method
	// (get, post, put, patch, delete). Exec, attach and port-forward are "create" whatever the
	// method, as in Kubernetes RBAC. Empty: any verb.
	Verbs []string `json:"verbs,omitempty"`
}

// knownVerbs are the values Rule.Verbs may hold.
var knownVerbs = []string{"get", "list", "watch", "create", "update", "patch", "delete", "deletecollection", "post", "put", "head", "options"}

// LoadPolicy reads a Policy from a YAML (or JSON) file. Unknown fields are errors.
func LoadPolicy(file string) (*Policy, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	var p Policy
	if err := yaml.UnmarshalStrict(b, &p); err != nil {
		return nil, fmt.Errorf("kubernetes policy %s: %w", file, err)
	}
	if err := p.Validate(); err != nil {
		return nil, fmt.Errorf("kubernetes policy %s: %w", file, err)
	}
	return &p, nil
}

// Validate reports problems with p: no rules (which would deny everything: almost certainly a
// mistake), paths that are not clean absolute paths, unknown verbs.
func (p *Policy) Validate() error {
	if len(p.Rules) == 0 {
		return errors.New("a policy needs at least one rule")
	}
	var errs []error
	for i, r := range p.Rules {
		for _, pp := range r.Paths {
			if !strings.HasPrefix(pp, "/") || path.Clean(pp) != pp {
				errs = append(errs, fmt.Errorf("rule %d: path %q must be a clean absolute path without a trailing slash", i, pp))
			}
		}
		for _, v := range r.Verbs {
			if !slices.Contains(knownVerbs, v) {
				errs = append(errs, fmt.Errorf("rule %d: unknown verb %q (want one of %s)", i, v, strings.Join(knownVerbs, ", ")))
			}
		}
	}
	return errors.Join(errs...)
}

// denial is why a policy refused a request; it is also the metric's reason label.
type denial string

const (
	allowed              denial = ""
	deniedPath           denial = "path"
	deniedVerb           denial = "verb"
	deniedPathNotCanonic denial = "path_not_canonical"
)

// decide applies p to a request for the decoded path p with Kubernetes verb verb.
func (p *Policy) decide(reqPath, verb string) denial {
	if p == nil {
		return allowed
	}
	if !canonicalPath(reqPath) {
		return deniedPathNotCanonic
	}
	pathMatched := false
	for _, r := range p.Rules {
		if len(r.Paths) > 0 && !slices.ContainsFunc(r.Paths, func(prefix string) bool { return underPrefix(reqPath, prefix) }) {
			continue
		}
		pathMatched = true
		if len(r.Verbs) == 0 || slices.Contains(r.Verbs, verb) {
			return allowed
		}
	}
	if pathMatched {
		return deniedVerb
	}
	return deniedPath
}

// canonicalPath reports whether p is absolute and has no empty, "." or ".." segments (a
// trailing slash is allowed), so that segment-wise prefix matching sees what the API server sees.
func canonicalPath(p string) bool {
	if !strings.HasPrefix(p, "/") {
		return false
	}
	segs := strings.Split(strings.TrimSuffix(p[1:], "/"), "/")
	if len(segs) == 1 && segs[0] == "" {
		return true // "/"
	}
	for _, s := range segs {
		if s == "" || s == "." || s == ".." {
			return false
		}
	}
	return true
}

// underPrefix reports whether p is prefix or lies below it, on segment boundaries.
func underPrefix(p, prefix string) bool {
	if prefix == "/" {
		return true
	}
	return p == prefix || strings.HasPrefix(p, prefix) && p[len(prefix)] == '/'
}

// requestVerb derives the Kubernetes authorization verb of a request the way the API server's
// RequestInfo does: resource requests under /api/{version} and /apis/{group}/{version} get
// get/list/watch/create/update/patch/delete/deletecollection; other paths get the lower-case
// method. Exec, attach and port-forward subresources are "create" for any method (WebSocket
// clients use GET). Methods outside the usual set are "other" so that a caller cannot grow the
// metric's label set.
func requestVerb(method, reqPath string, query url.Values) string {
	var m string
	switch method {
	case "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS":
		m = strings.ToLower(method)
	default:
		return "other"
	}
	parts := strings.Split(strings.Trim(reqPath, "/"), "/")
	var rest []string
	switch {
	case len(parts) >= 3 && parts[0] == "api":
		rest = parts[2:]
	case len(parts) >= 4 && parts[0] == "apis":
		rest = parts[3:]
	default:
		if m == "head" {
			return "get"
		}
		return m // non-resource request (discovery, /version, /healthz, ...)
	}
	watchPrefix := false
	if rest[0] == "watch" { // deprecated /api/v1/watch/... form
		watchPrefix = true
		rest = rest[1:]
		if len(rest) == 0 {
			return "watch"
		}
	}
	// namespaces/{ns}/{resource}... is a namespaced resource; namespaces[/{name}] is the
	// namespaces resource itself.
	if rest[0] == "namespaces" && len(rest) > 2 {
		rest = rest[2:]
	}
	collection := len(rest) == 1
	if len(rest) >= 3 {
		switch rest[2] {
		case "exec", "attach", "portforward":
			return "create"
		}
	}
	switch m {
	case "get", "head":
		if watchPrefix || isWatch(query) {
			return "watch"
		}
		if collection {
			return "list"
		}
		return "get"
	case "post":
		return "create"
	case "put":
		return "update"
	case "patch":
		return "patch"
	case "delete":
		if collection {
			return "deletecollection"
		}
		return "delete"
	}
	return m // options
}

// isWatch reads the watch parameter the way the API server does (apimachinery's
// Convert_Slice_string_To_bool, by which both its RequestInfo and its list handler decode
// ListOptions): absent, or a first value of "0" or "false" (any case), is no watch; any other
// value asks for one, the empty value included ("?watch", "?watch="), which the API server
// streams as a watch.
func isWatch(query url.Values) bool {
	vs := query["watch"]
	if len(vs) == 0 {
		return false
	}
	return vs[0] != "0" && !strings.EqualFold(vs[0], "false")
}
