package manifests_test

import (
	"fmt"
	"net"
	"net/url"
	"path"
	"reflect"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	yamlv3 "go.yaml.in/yaml/v3"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
	"sigs.k8s.io/yaml"
)

// object is one decoded object of a build.
type object struct {
	kind, namespace, name string
	obj                   runtime.Object
}

func (o object) String() string {
	if o.namespace == "" {
		return o.kind + " " + o.name
	}
	return o.kind + " " + o.namespace + "/" + o.name
}

// buildResult is the output of one kustomization, decoded.
type buildResult struct {
	dir     string
	objects []object
}

// build runs kustomize (krusty, what `kubectl apply -k` runs) on dir and decodes every object
// with client-go's scheme, then again strictly (unknown or duplicate fields are errors).
func build(fsys filesys.FileSystem, dir string) (*buildResult, error) {
	m, err := krusty.MakeKustomizer(krusty.MakeDefaultOptions()).Run(fsys, path.Join(root, dir))
	if err != nil {
		return nil, fmt.Errorf("kustomize build %s: %w", dir, err)
	}
	b := &buildResult{dir: dir}
	for _, r := range m.Resources() {
		y, err := r.AsYAML()
		if err != nil {
			return nil, err
		}
		obj, gvk, err := scheme.Codecs.UniversalDeserializer().Decode(y, nil, nil)
		if err != nil {
			return nil, fmt.Errorf("%s: decode %s %s: %w", dir, r.GetKind(), r.GetName(), err)
		}
		strict := reflect.New(reflect.TypeOf(obj).Elem()).Interface()
		if err := yaml.UnmarshalStrict(y, strict); err != nil {
			return nil, fmt.Errorf("%s: %s %s: strict decoding: %w", dir, gvk.Kind, r.GetName(), err)
		}
		b.objects = append(b.objects, object{kind: gvk.Kind, namespace: r.GetNamespace(), name: r.GetName(), obj: obj})
	}
	return b, nil
}

func (b *buildResult) find(kind, namespace, name string) (object, bool) {
	for _, o := range b.objects {
		if o.kind == kind && o.name == name && (namespace == "" || o.namespace == namespace) {
			return o, true
		}
	}
	return object{}, false
}

// data returns the keys (and contents) of the ConfigMap or Secret kind/name: from the build, or
// from the external table (keys only, contents nil).
func (b *buildResult) data(kind, namespace, name string) (map[string][]byte, bool) {
	if o, ok := b.find(kind, namespace, name); ok {
		out := map[string][]byte{}
		switch v := o.obj.(type) {
		case *corev1.ConfigMap:
			for k, s := range v.Data {
				out[k] = []byte(s)
			}
			for k, d := range v.BinaryData {
				out[k] = d
			}
		case *corev1.Secret:
			for k, d := range v.Data {
				out[k] = d
			}
			for k, s := range v.StringData {
				out[k] = []byte(s)
			}
		}
		return out, true
	}
	keys, ok := external[kind+"/"+name]
	if !ok {
		return nil, false
	}
	out := map[string][]byte{}
	for _, k := range keys {
		out[k] = nil
	}
	return out, true
}

// workload is a Deployment or StatefulSet.
type workload struct {
	object
	replicas    int32
	selector    map[string]string
	labels      map[string]string
	spec        *corev1.PodSpec
	serviceName string   // StatefulSet
	claims      []string // StatefulSet volumeClaimTemplates
}

func (b *buildResult) workloads() []workload {
	var out []workload
	for _, o := range b.objects {
		switch v := o.obj.(type) {
		case *appsv1.Deployment:
			out = append(out, workload{o, replicas(v.Spec.Replicas), selectorLabels(v.Spec.Selector.MatchLabels), v.Spec.Template.Labels, &v.Spec.Template.Spec, "", nil})
		case *appsv1.StatefulSet:
			var claims []string
			for _, c := range v.Spec.VolumeClaimTemplates {
				claims = append(claims, c.Name)
			}
			out = append(out, workload{o, replicas(v.Spec.Replicas), selectorLabels(v.Spec.Selector.MatchLabels), v.Spec.Template.Labels, &v.Spec.Template.Spec, v.Spec.ServiceName, claims})
		}
	}
	return out
}

func replicas(r *int32) int32 {
	if r == nil {
		return 1
	}
	return *r
}

func selectorLabels(m map[string]string) map[string]string { return m }

// matches reports whether labels has every key and value of selector (an empty selector
// matches nothing here: none of our selectors is meant to be empty).
func matches(selector, labels map[string]string) bool {
	if len(selector) == 0 {
		return false
	}
	for k, v := range selector {
		if labels[k] != v {
			return false
		}
	}
	return true
}

func (b *buildResult) selected(namespace string, selector map[string]string) []workload {
	var out []workload
	for _, w := range b.workloads() {
		if w.namespace == namespace && matches(selector, w.labels) {
			out = append(out, w)
		}
	}
	return out
}

var clusterScoped = map[string]bool{"ClusterRole": true, "ClusterRoleBinding": true, "Namespace": true}

// problems collects what is wrong, each prefixed with the build's directory.
type problems struct {
	dir string
	out []string
}

func (p *problems) add(format string, args ...any) {
	p.out = append(p.out, p.dir+": "+fmt.Sprintf(format, args...))
}

// checkBuild checks one build's objects against each other and against the binaries' flags.
func checkBuild(b *buildResult, bins map[string]map[string]flagInfo) []string {
	p := &problems{dir: b.dir}
	namespaces := map[string]bool{}
	for _, o := range b.objects {
		if !clusterScoped[o.kind] {
			namespaces[o.namespace] = true
		}
	}
	if len(namespaces) != 1 || namespaces[""] {
		p.add("namespaced objects must share one namespace set by the kustomization, have %v", keys(namespaces))
	}
	used := map[string]bool{} // "Kind/name" of ConfigMaps and Secrets that pods use
	for _, w := range b.workloads() {
		if !matches(w.selector, w.labels) {
			p.add("%s: selector %v does not match its pod labels %v", w, w.selector, w.labels)
		}
		checkPod(p, b, w, bins, used)
	}
	for _, o := range b.objects {
		switch v := o.obj.(type) {
		case *corev1.Service:
			checkService(p, b, o, v)
		case *policyv1.PodDisruptionBudget:
			var sel map[string]string
			if v.Spec.Selector != nil {
				sel = v.Spec.Selector.MatchLabels
			}
			ws := b.selected(o.namespace, sel)
			if len(ws) == 0 {
				p.add("PodDisruptionBudget %s selects no pods", o.name)
			}
			for _, w := range ws {
				if m := v.Spec.MinAvailable; m != nil && m.Type == intstr.Int && m.IntVal >= w.replicas {
					p.add("PodDisruptionBudget %s: minAvailable %d blocks every eviction of %s (%d replicas)", o.name, m.IntVal, w, w.replicas)
				}
				if m := v.Spec.MaxUnavailable; m != nil && m.Type == intstr.Int && m.IntVal < 1 {
					p.add("PodDisruptionBudget %s: maxUnavailable %d blocks every eviction", o.name, m.IntVal)
				}
			}
		case *rbacv1.RoleBinding:
			checkRoleRef(p, b, o, v.RoleRef)
			checkSubjects(p, b, o, v.Subjects)
		case *rbacv1.ClusterRoleBinding:
			checkRoleRef(p, b, o, v.RoleRef)
			checkSubjects(p, b, o, v.Subjects)
		}
	}
	for _, o := range b.objects {
		if (o.kind == "ConfigMap" || o.kind == "Secret") && !used[o.kind+"/"+o.name] {
			p.add("%s is used by no pod", o)
		}
	}
	return p.out
}

func checkService(p *problems, b *buildResult, o object, s *corev1.Service) {
	ws := b.selected(o.namespace, s.Spec.Selector)
	if len(ws) == 0 {
		p.add("Service %s selects no pods (selector %v)", o.name, s.Spec.Selector)
	}
	for _, w := range ws {
		for _, sp := range s.Spec.Ports {
			target := sp.TargetPort
			if target.Type == intstr.Int && target.IntVal == 0 {
				target = intstr.FromInt32(sp.Port)
			}
			cp, ok := containerPort(w.spec, target)
			if !ok {
				p.add("Service %s port %s (%d): targetPort %q is not a container port of %s", o.name, sp.Name, sp.Port, target.String(), w)
				continue
			}
			if protocol(sp.Protocol) != protocol(cp.Protocol) {
				p.add("Service %s port %s (%d/%s): container port %s %d is %s", o.name, sp.Name, sp.Port, protocol(sp.Protocol), cp.Name, cp.ContainerPort, protocol(cp.Protocol))
			}
		}
	}
}

func protocol(p corev1.Protocol) corev1.Protocol {
	if p == "" {
		return corev1.ProtocolTCP
	}
	return p
}

// containerPort finds the port a Service targetPort or a probe port names, in any container.
func containerPort(spec *corev1.PodSpec, port intstr.IntOrString) (corev1.ContainerPort, bool) {
	for _, c := range spec.Containers {
		for _, cp := range c.Ports {
			if (port.Type == intstr.String && cp.Name == port.StrVal) || (port.Type == intstr.Int && cp.ContainerPort == port.IntVal) {
				return cp, true
			}
		}
	}
	return corev1.ContainerPort{}, false
}

func checkRoleRef(p *problems, b *buildResult, o object, ref rbacv1.RoleRef) {
	ns := o.namespace
	if ref.Kind == "ClusterRole" {
		ns = ""
	}
	if _, ok := b.find(ref.Kind, ns, ref.Name); !ok {
		if _, ok := external[ref.Kind+"/"+ref.Name]; !ok {
			p.add("%s: roleRef %s %q is not in the build", o, ref.Kind, ref.Name)
		}
	}
}

func checkSubjects(p *problems, b *buildResult, o object, subjects []rbacv1.Subject) {
	if len(subjects) == 0 {
		p.add("%s has no subjects", o)
	}
	for _, s := range subjects {
		if s.Kind != "ServiceAccount" {
			continue
		}
		ns := s.Namespace
		if ns == "" {
			ns = o.namespace
		}
		if _, ok := b.find("ServiceAccount", ns, s.Name); !ok || ns == "" {
			p.add("%s: subject ServiceAccount %q is not in the build", o, ns+"/"+s.Name)
		}
	}
}

var envRef = regexp.MustCompile(`\$\(([A-Za-z_][A-Za-z0-9_]*)\)`)

func checkPod(p *problems, b *buildResult, w workload, bins map[string]map[string]flagInfo, used map[string]bool) {
	spec := w.spec
	if sa := spec.ServiceAccountName; sa != "" && sa != "default" {
		if _, ok := b.find("ServiceAccount", w.namespace, sa); !ok {
			p.add("%s: ServiceAccount %q not in the build", w, sa)
		}
	}
	if w.serviceName != "" {
		o, ok := b.find("Service", w.namespace, w.serviceName)
		svc, _ := o.obj.(*corev1.Service)
		if !ok || svc.Spec.ClusterIP != corev1.ClusterIPNone || !matches(svc.Spec.Selector, w.labels) {
			p.add("%s: serviceName %q must be a headless Service selecting its pods", w, w.serviceName)
		}
	}
	volumes := map[string]corev1.Volume{}
	for _, name := range w.claims {
		volumes[name] = corev1.Volume{Name: name, VolumeSource: corev1.VolumeSource{PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: name}}}
	}
	for _, v := range spec.Volumes {
		volumes[v.Name] = v
		refs := volumeRefs(v)
		for _, r := range refs {
			used[r.kind+"/"+r.name] = true
			d, ok := b.data(r.kind, w.namespace, r.name)
			if !ok {
				if !r.optional {
					p.add("%s: volume %s: %s %q is neither in the build nor a known external object", w, v.Name, r.kind, r.name)
				}
				continue
			}
			for _, it := range r.items {
				if _, ok := d[it.Key]; !ok {
					p.add("%s: volume %s: %s %q has no key %q", w, v.Name, r.kind, r.name, it.Key)
				}
			}
		}
	}
	nonRoot := spec.SecurityContext != nil && spec.SecurityContext.RunAsNonRoot != nil && *spec.SecurityContext.RunAsNonRoot
	// Secret, ConfigMap and projected files are owned by root, group fsGroup: a non-root pod
	// reads a file that is not world-readable only through fsGroup.
	if nonRoot && (spec.SecurityContext.FSGroup == nil) {
		for _, v := range spec.Volumes {
			var mode *int32
			switch {
			case v.Secret != nil:
				mode = v.Secret.DefaultMode
			case v.ConfigMap != nil:
				mode = v.ConfigMap.DefaultMode
			case v.Projected != nil:
				mode = v.Projected.DefaultMode
			}
			if mode != nil && *mode&0o004 == 0 {
				p.add("%s: volume %s has defaultMode %#o, not world-readable, and the non-root pod sets no fsGroup: its files are root's only", w, v.Name, *mode)
			}
		}
	}
	for _, c := range spec.Containers {
		where := fmt.Sprintf("%s container %s", w, c.Name)
		sc := c.SecurityContext
		if sc != nil && sc.RunAsNonRoot != nil {
			nonRoot = *sc.RunAsNonRoot
		}
		if !nonRoot {
			p.add("%s: runAsNonRoot must be true", where)
		}
		if sc == nil || sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem ||
			sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation ||
			sc.Capabilities == nil || fmt.Sprint(sc.Capabilities.Drop) != "[ALL]" {
			p.add("%s: want readOnlyRootFilesystem, no privilege escalation, all capabilities dropped", where)
		}
		if c.Resources.Requests.Cpu().IsZero() || c.Resources.Requests.Memory().IsZero() || c.Resources.Limits.Memory().IsZero() {
			p.add("%s: want cpu and memory requests and a memory limit", where)
		}
		if _, tag, _ := strings.Cut(path.Base(c.Image), ":"); tag == "" || tag == "latest" {
			p.add("%s: image %q needs a pinned tag", where, c.Image)
		}
		names := map[string]bool{}
		for _, cp := range c.Ports {
			if names[cp.Name] {
				p.add("%s: port name %q twice", where, cp.Name)
			}
			names[cp.Name] = true
		}
		env := map[string]bool{}
		for _, e := range c.Env {
			env[e.Name] = true
			if e.ValueFrom == nil {
				continue
			}
			if r := e.ValueFrom.SecretKeyRef; r != nil {
				used["Secret/"+r.Name] = true
				checkKey(p, b, w, where, "Secret", r.Name, r.Key, r.Optional)
			}
			if r := e.ValueFrom.ConfigMapKeyRef; r != nil {
				used["ConfigMap/"+r.Name] = true
				checkKey(p, b, w, where, "ConfigMap", r.Name, r.Key, r.Optional)
			}
		}
		for _, e := range c.EnvFrom {
			if r := e.SecretRef; r != nil {
				used["Secret/"+r.Name] = true
				checkKey(p, b, w, where, "Secret", r.Name, "", r.Optional)
			}
			if r := e.ConfigMapRef; r != nil {
				used["ConfigMap/"+r.Name] = true
				checkKey(p, b, w, where, "ConfigMap", r.Name, "", r.Optional)
			}
		}
		for _, a := range append(append([]string(nil), c.Command...), c.Args...) {
			for _, m := range envRef.FindAllStringSubmatch(a, -1) {
				if !env[m[1]] {
					p.add("%s: %q refers to $(%s), which is not in env (Kubernetes would pass it literally)", where, a, m[1])
				}
			}
		}
		for _, m := range c.VolumeMounts {
			if _, ok := volumes[m.Name]; !ok {
				p.add("%s: volumeMount %s names no volume", where, m.Name)
			}
		}
		for kind, pr := range map[string]*corev1.Probe{"readiness": c.ReadinessProbe, "liveness": c.LivenessProbe, "startup": c.StartupProbe} {
			if pr == nil {
				continue
			}
			var port intstr.IntOrString
			switch {
			case pr.HTTPGet != nil:
				port = pr.HTTPGet.Port
			case pr.TCPSocket != nil:
				port = pr.TCPSocket.Port
			case pr.GRPC != nil:
				port = intstr.FromInt32(pr.GRPC.Port)
			default:
				continue
			}
			if cp, ok := containerPort(&corev1.PodSpec{Containers: []corev1.Container{c}}, port); !ok || protocol(cp.Protocol) != corev1.ProtocolTCP {
				p.add("%s: %s probe port %s is not a TCP port of the container", where, kind, port.String())
			}
		}
		if len(c.Command) > 0 {
			if flags, ok := bins[path.Base(c.Command[0])]; ok {
				checkQkasContainer(p, b, w, c, path.Base(c.Command[0]), flags, volumes)
			}
		}
	}
}

func checkKey(p *problems, b *buildResult, w workload, where, kind, name, key string, optional *bool) {
	d, ok := b.data(kind, w.namespace, name)
	if !ok {
		if optional == nil || !*optional {
			p.add("%s: %s %q is neither in the build nor a known external object", where, kind, name)
		}
		return
	}
	if _, ok := d[key]; key != "" && !ok {
		p.add("%s: %s %q has no key %q", where, kind, name, key)
	}
}

type volumeRef struct {
	kind, name string
	items      []corev1.KeyToPath
	optional   bool
}

func volumeRefs(v corev1.Volume) []volumeRef {
	opt := func(b *bool) bool { return b != nil && *b }
	var out []volumeRef
	if s := v.ConfigMap; s != nil {
		out = append(out, volumeRef{"ConfigMap", s.Name, s.Items, opt(s.Optional)})
	}
	if s := v.Secret; s != nil {
		out = append(out, volumeRef{"Secret", s.SecretName, s.Items, opt(s.Optional)})
	}
	if s := v.Projected; s != nil {
		for _, src := range s.Sources {
			if c := src.ConfigMap; c != nil {
				out = append(out, volumeRef{"ConfigMap", c.Name, c.Items, opt(c.Optional)})
			}
			if c := src.Secret; c != nil {
				out = append(out, volumeRef{"Secret", c.Name, c.Items, opt(c.Optional)})
			}
		}
	}
	return out
}

// listenFlags are the listeners of each binary that must be container ports, with protocols.
var listenFlags = map[string]map[string]corev1.Protocol{
	"kasd": {
		"agent-listen":         corev1.ProtocolUDP,
		"api-listen":           corev1.ProtocolTCP,
		"peer-listen":          corev1.ProtocolUDP,
		"observability-listen": corev1.ProtocolTCP,
	},
	"agentd": {"observability-listen": corev1.ProtocolTCP},
}

// graceFlags is, per binary, the flag bounding its drain after SIGTERM and what it adds on top
// (kasd: its run.go gives Shutdown --shutdown-grace plus 5s to close).
var graceFlags = map[string]struct {
	flag   string
	margin time.Duration
}{
	"kasd":   {"shutdown-grace", 5 * time.Second},
	"agentd": {"drain-timeout", 0},
}

// settings are a qkas container's effective flag values: defaults, then the --config file, then
// the command line.
type settings map[string][]string

func (s settings) get(name string) string {
	if v := s[name]; len(v) > 0 {
		return v[len(v)-1]
	}
	return ""
}

// qkasSettings parses a kasd or agentd container's args and config file, checking every flag
// name and value type against the binary.
func qkasSettings(p *problems, b *buildResult, w workload, c corev1.Container, flags map[string]flagInfo, volumes map[string]corev1.Volume) (settings, map[string]bool) {
	where := fmt.Sprintf("%s container %s", w, c.Name)
	set := settings{}
	for name, f := range flags {
		if f.def != "" {
			set[name] = []string{f.def}
		}
	}
	explicit := map[string]bool{}
	fromArgs := settings{}
	for _, a := range append(append([]string(nil), c.Command[1:]...), c.Args...) {
		if !strings.HasPrefix(a, "-") {
			p.add("%s: argument %q is not a flag", where, a)
			continue
		}
		name, val, hasVal := strings.Cut(strings.TrimLeft(a, "-"), "=")
		f, ok := flags[name]
		if !ok {
			p.add("%s: unknown flag %q in %q", where, name, a)
			continue
		}
		if !hasVal {
			if f.typ != "" {
				p.add("%s: write %q as --%s=VALUE (one argument per flag)", where, a, name)
				continue
			}
			val = "true"
		}
		checkValue(p, where, name, f, val)
		fromArgs[name] = append(fromArgs[name], val)
		explicit[name] = true
	}
	if cfg := fromArgs.get("config"); cfg != "" {
		content, ok := resolveFile(p, b, w, c, volumes, "config", cfg)
		if ok && content != nil {
			var m map[string]any // YAML 1.2, as cliconfig reads it: "off" is a string
			if err := yamlv3.Unmarshal(content, &m); err != nil {
				p.add("%s: --config %s: %v", where, cfg, err)
			}
			for k, v := range m {
				f, ok := flags[k]
				if !ok || k == "config" {
					p.add("%s: --config %s: unknown key %q (keys are flag names)", where, cfg, k)
					continue
				}
				set[k] = nil
				for _, s := range configValues(v) {
					if strings.Contains(s, "=") && f.typ != "value" && isMap(v) {
						p.add("%s: --config %s: key %q takes no map", where, cfg, k)
					}
					checkValue(p, where, k, f, s)
					set[k] = append(set[k], s)
				}
				explicit[k] = true
			}
		}
	}
	for k, v := range fromArgs {
		set[k] = v
	}
	return set, explicit
}

func isMap(v any) bool { _, ok := v.(map[string]any); return ok }

// configValues flattens a config value the way cliconfig does: lists give each element, maps
// give KEY=VALUE.
func configValues(v any) []string {
	switch v := v.(type) {
	case []any:
		var out []string
		for _, e := range v {
			out = append(out, configScalar(e))
		}
		return out
	case map[string]any:
		var out []string
		for k, e := range v {
			out = append(out, k+"="+configScalar(e))
		}
		sort.Strings(out)
		return out
	case nil:
		return []string{""}
	default:
		return []string{configScalar(v)}
	}
}

// configScalar formats a decoded YAML scalar close to how it is written, which cliconfig passes
// on: floats without an exponent (fmt.Sprint would turn 7340032.0 into 7.340032e+06).
func configScalar(v any) string {
	if f, ok := v.(float64); ok {
		return strconv.FormatFloat(f, 'f', -1, 64)
	}
	return fmt.Sprint(v)
}

func checkValue(p *problems, where, name string, f flagInfo, val string) {
	if strings.Contains(val, "$(") {
		return
	}
	var err error
	switch f.typ {
	case "":
		_, err = strconv.ParseBool(val)
	case "duration":
		_, err = time.ParseDuration(val)
	case "int":
		_, err = strconv.Atoi(val)
	case "float":
		_, err = strconv.ParseFloat(val, 64)
	}
	if err != nil {
		p.add("%s: --%s=%q is not a %s", where, name, val, map[string]string{"": "bool"}[f.typ]+f.typ)
	}
}

func checkQkasContainer(p *problems, b *buildResult, w workload, c corev1.Container, bin string, flags map[string]flagInfo, volumes map[string]corev1.Volume) {
	where := fmt.Sprintf("%s container %s", w, c.Name)
	if c.Image == "qkas" {
		p.add("%s: image is the bare placeholder %q: the kustomization's images: must set it", where, c.Image)
	}
	set, explicit := qkasSettings(p, b, w, c, flags, volumes)

	// Every file a flag names is in a mounted ConfigMap or Secret.
	for name := range explicit {
		if name == "config" || name == "kubeconfig" || strings.HasSuffix(name, "-file") {
			for _, v := range set[name] {
				if v != "" {
					resolveFile(p, b, w, c, volumes, name, v)
				}
			}
		}
	}
	// The data directory is writable although the root file system is not.
	if dir := set.get("data-dir"); dir != "" {
		m, _, ok := mountFor(c, dir)
		if !ok || m.ReadOnly || volumes[m.Name].EmptyDir == nil && volumes[m.Name].PersistentVolumeClaim == nil {
			p.add("%s: --data-dir=%s must be a writable volume (the root file system is read-only)", where, dir)
		}
	}
	// Listeners are declared container ports with the right protocol, and nothing else is.
	declared := map[string]bool{}
	for name, proto := range listenFlags[bin] {
		addr := set.get(name)
		if addr == "" {
			continue
		}
		_, port, err := net.SplitHostPort(addr)
		n, err2 := strconv.Atoi(port)
		if err != nil || err2 != nil {
			p.add("%s: --%s=%q is not host:port", where, name, addr)
			continue
		}
		found := false
		for _, cp := range c.Ports {
			if int(cp.ContainerPort) == n && protocol(cp.Protocol) == proto {
				found = true
				declared[cp.Name] = true
			}
		}
		if !found {
			p.add("%s: --%s=%s: no container port %d/%s", where, name, addr, n, proto)
		}
	}
	for _, cp := range c.Ports {
		if !declared[cp.Name] {
			p.add("%s: container port %s (%d) is no listener of %s", where, cp.Name, cp.ContainerPort, bin)
		}
	}
	if adv := set.get("peer-advertise-address"); adv != "" {
		_, ap, _ := net.SplitHostPort(adv)
		_, lp, _ := net.SplitHostPort(set.get("peer-listen"))
		if ap != lp {
			p.add("%s: --peer-advertise-address=%s: port differs from --peer-listen %s", where, adv, set.get("peer-listen"))
		}
	}
	// Probes: readiness on /readyz, liveness on /healthz, both on the observability listener.
	_, obsPort, _ := net.SplitHostPort(set.get("observability-listen"))
	for kind, want := range map[string]struct {
		probe *corev1.Probe
		path  string
	}{"readiness": {c.ReadinessProbe, "/readyz"}, "liveness": {c.LivenessProbe, "/healthz"}} {
		pr := want.probe
		if pr == nil || pr.HTTPGet == nil {
			p.add("%s: want an HTTP %s probe on %s", where, kind, want.path)
			continue
		}
		cp, _ := containerPort(&corev1.PodSpec{Containers: []corev1.Container{c}}, pr.HTTPGet.Port)
		if pr.HTTPGet.Path != want.path || strconv.Itoa(int(cp.ContainerPort)) != obsPort {
			p.add("%s: %s probe %s on port %s, want %s on --observability-listen port %s", where, kind, pr.HTTPGet.Path, pr.HTTPGet.Port.String(), want.path, obsPort)
		}
	}
	// terminationGracePeriodSeconds covers the preStop sleep and the whole drain.
	if g, ok := graceFlags[bin]; ok {
		grace, err := time.ParseDuration(set.get(g.flag))
		if err != nil {
			p.add("%s: --%s: %v", where, g.flag, err)
		}
		var preStop time.Duration
		if c.Lifecycle != nil && c.Lifecycle.PreStop != nil && c.Lifecycle.PreStop.Sleep != nil {
			preStop = time.Duration(c.Lifecycle.PreStop.Sleep.Seconds) * time.Second
		}
		tgps := 30 * time.Second
		if s := w.spec.TerminationGracePeriodSeconds; s != nil {
			tgps = time.Duration(*s) * time.Second
		}
		if need := preStop + grace + g.margin; tgps <= need {
			p.add("%s: terminationGracePeriodSeconds %v must exceed preStop %v + --%s %v + %v", where, tgps, preStop, g.flag, grace, g.margin)
		}
	}
}

// mountFor finds the volume mount holding file, and file's path inside the volume.
func mountFor(c corev1.Container, file string) (corev1.VolumeMount, string, bool) {
	var best corev1.VolumeMount
	var rel string
	found := false
	for _, m := range c.VolumeMounts {
		mp := strings.TrimSuffix(m.MountPath, "/")
		switch {
		case m.SubPath != "" && file == mp:
			return m, m.SubPath, true
		case m.SubPath == "" && (file == mp || strings.HasPrefix(file, mp+"/")) && len(mp) > len(best.MountPath):
			best, rel, found = m, strings.TrimPrefix(strings.TrimPrefix(file, mp), "/"), true
		}
	}
	return best, rel, found
}

// resolveFile checks that the file a flag names is a key of a ConfigMap or Secret mounted in the
// container, and returns its content when the build has it (nil for external objects).
func resolveFile(p *problems, b *buildResult, w workload, c corev1.Container, volumes map[string]corev1.Volume, flag, file string) ([]byte, bool) {
	where := fmt.Sprintf("%s container %s: --%s=%s", w, c.Name, flag, file)
	m, rel, ok := mountFor(c, file)
	if !ok {
		p.add("%s: no volume is mounted there", where)
		return nil, false
	}
	for _, r := range volumeRefs(volumes[m.Name]) {
		key := rel
		if len(r.items) > 0 {
			key = ""
			for _, it := range r.items {
				if it.Path == rel {
					key = it.Key
				}
			}
		}
		d, ok := b.data(r.kind, w.namespace, r.name)
		if !ok {
			continue // reported with the volume
		}
		if content, ok := d[key]; ok && key != "" {
			return content, true
		}
	}
	p.add("%s: volume %s (mounted at %s) has no key %q", where, m.Name, m.MountPath, rel)
	return nil, false
}

func keys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// checkAcross checks what connects the builds: kasd's etcd endpoints are members of the etcd
// StatefulSet (same namespace, short DNS names), etcd's --initial-cluster lists exactly its
// members, and agentd dials the port of kasd's agent LoadBalancer.
func checkAcross(etcd, kasd, agentd *buildResult, bins map[string]map[string]flagInfo) []string {
	p := &problems{dir: "etcd+kasd+agentd"}
	var sts *workload
	for _, w := range etcd.workloads() {
		if w.kind == "StatefulSet" {
			sts = &w
		}
	}
	if sts == nil || len(sts.spec.Containers) != 1 {
		p.add("want one etcd StatefulSet with one container")
		return p.out
	}
	ec := sts.spec.Containers[0]
	port := func(name string) int32 {
		cp, ok := containerPort(sts.spec, intstr.FromString(name))
		if !ok {
			p.add("etcd: no container port %q", name)
		}
		return cp.ContainerPort
	}
	clientPort, peerPort := port("client"), port("peer")
	args := map[string]string{}
	for _, a := range ec.Args {
		k, v, _ := strings.Cut(strings.TrimLeft(a, "-"), "=")
		args[k] = v
	}
	podName := ""
	for _, e := range ec.Env {
		if e.ValueFrom != nil && e.ValueFrom.FieldRef != nil && e.ValueFrom.FieldRef.FieldPath == "metadata.name" {
			podName = "$(" + e.Name + ")"
		}
	}
	var members []string
	for i := range sts.replicas {
		m := fmt.Sprintf("%s-%d", sts.name, i)
		members = append(members, fmt.Sprintf("%s=http://%s.%s:%d", m, m, sts.serviceName, peerPort))
	}
	if got := args["initial-cluster"]; got != strings.Join(members, ",") {
		p.add("etcd --initial-cluster=%s, want %s", got, strings.Join(members, ","))
	}
	for flag, want := range map[string]string{
		"name":                        podName,
		"initial-advertise-peer-urls": fmt.Sprintf("http://%s.%s:%d", podName, sts.serviceName, peerPort),
		"advertise-client-urls":       fmt.Sprintf("http://%s.%s:%d", podName, sts.serviceName, clientPort),
	} {
		if podName == "" || args[flag] != want {
			p.add("etcd --%s=%s, want %s (the pod name from the downward API)", flag, args[flag], want)
		}
	}

	kw := findWorkload(kasd, "kasd")
	if kw == nil {
		p.add("kasd: no kasd Deployment")
		return p.out
	}
	if kw.namespace != sts.namespace {
		p.add("kasd (namespace %s) reaches etcd (namespace %s) by short names: same namespace needed", kw.namespace, sts.namespace)
	}
	kp := &problems{dir: "kasd"}
	kset, _ := qkasSettings(kp, kasd, *kw, kw.spec.Containers[0], bins["kasd"], podVolumes(kw.spec))
	p.out = append(p.out, kp.out...)
	endpoints := kset["etcd-endpoints"]
	if len(endpoints) != int(sts.replicas) {
		p.add("kasd --etcd-endpoints %v: want the %d etcd members", endpoints, sts.replicas)
	}
	for _, e := range endpoints {
		u, err := url.Parse(e)
		if err != nil {
			p.add("kasd --etcd-endpoints %s: %v", e, err)
			continue
		}
		member, svc, _ := strings.Cut(u.Hostname(), ".")
		ordinal, err := strconv.Atoi(strings.TrimPrefix(member, sts.name+"-"))
		if u.Scheme != "http" || svc != sts.serviceName || !strings.HasPrefix(member, sts.name+"-") || err != nil ||
			ordinal < 0 || ordinal >= int(sts.replicas) || u.Port() != strconv.Itoa(int(clientPort)) {
			p.add("kasd --etcd-endpoints %s is not an etcd member (%s-N.%s:%d, N < %d)", e, sts.name, sts.serviceName, clientPort, sts.replicas)
		}
	}

	aw := findWorkload(agentd, "agentd")
	if aw == nil {
		p.add("agentd: no agentd Deployment")
		return p.out
	}
	ap := &problems{dir: "agentd"}
	aset, _ := qkasSettings(ap, agentd, *aw, aw.spec.Containers[0], bins["agentd"], podVolumes(aw.spec))
	p.out = append(p.out, ap.out...)
	_, agentPort, _ := net.SplitHostPort(kset.get("agent-listen"))
	lb := false
	for _, o := range kasd.objects {
		if s, ok := o.obj.(*corev1.Service); ok && s.Spec.Type == corev1.ServiceTypeLoadBalancer {
			for _, sp := range s.Spec.Ports {
				cp, ok := containerPort(kw.spec, sp.TargetPort)
				if ok && strconv.Itoa(int(cp.ContainerPort)) == agentPort && protocol(sp.Protocol) == corev1.ProtocolUDP {
					lb = true
					for _, a := range aset["kas-address"] {
						if _, port, err := net.SplitHostPort(a); err != nil || port != strconv.Itoa(int(sp.Port)) {
							p.add("agentd --kas-address=%s: want the port of kasd's LoadBalancer, %d", a, sp.Port)
						}
					}
				}
			}
		}
	}
	if !lb {
		p.add("kasd: no LoadBalancer Service exposes the agent port %s/UDP", agentPort)
	}
	if n := len(aset["kas-connections"]); n == 0 || aset.get("kas-connections") == "1" || aw.replicas < 2 {
		p.add("agentd: want 2 replicas with --kas-connections of at least 2 for HA, have %d replicas, %v", aw.replicas, aset["kas-connections"])
	}
	return p.out
}

func findWorkload(b *buildResult, name string) *workload {
	for _, w := range b.workloads() {
		if w.name == name {
			return &w
		}
	}
	return nil
}

func podVolumes(spec *corev1.PodSpec) map[string]corev1.Volume {
	out := map[string]corev1.Volume{}
	for _, v := range spec.Volumes {
		out[v.Name] = v
	}
	return out
}
