package manifests_test

import (
	"bytes"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"

	"sigs.k8s.io/kustomize/kyaml/filesys"
	"sigs.k8s.io/yaml"
)

// root is where the manifests live in the in-memory file system the kustomizations are built in.
const root = "/manifests"

// adminFiles are the files the admin creates before `kubectl apply -k` (the secretGenerator
// and configMapGenerator inputs under */secrets/, git-ignored). The test builds with these
// stand-ins and never reads the real files, which may hold real secrets.
var adminFiles = map[string]string{
	"kasd/secrets/api-jwt-secret":    "c3RhbmQtaW4gc2VjcmV0IGZvciB0aGUgbWFuaWZlc3QgdGVzdCEh\n",
	"kasd/secrets/peer-secret":       "c3RhbmQtaW4gc2VjcmV0IGZvciB0aGUgbWFuaWZlc3QgdGVzdCEh\n",
	"kasd/secrets/agent-tokens.yaml": "agents:\n- id: test\n  token_sha256: 0000000000000000000000000000000000000000000000000000000000000000\n",
	"agentd/secrets/token":           "qkas_stand-in\n",
	"agentd/secrets/kas-ca.crt":      "-----BEGIN CERTIFICATE-----\nstand-in\n-----END CERTIFICATE-----\n",
}

// external are the objects the manifests refer to but do not create, with the keys they must
// hold. docs/kubernetes.md tells the admin to create each (or Kubernetes has it built in).
var external = map[string][]string{
	"Secret/kasd-tls":            {"tls.crt", "tls.key"},           // kubectl create secret tls, or cert-manager
	"Secret/kasd-etcd-client":    {"ca.crt", "tls.crt", "tls.key"}, // overlays/external-etcd
	"ClusterRole/view":           nil,                              // built into Kubernetes
	"ServiceAccount/default":     nil,
	"Namespace/qkas":             nil, // kubectl create namespace
	"Namespace/qkas-agent":       nil,
	"ConfigMap/kube-root-ca.crt": {"ca.crt"},
}

// kustomizations are the directories under manifests/ an admin applies (kubectl apply -k); each
// is built and checked on its own. parts are the kustomizations they are made of, checked as
// parts of them. The test fails if a kustomization.yaml appears that is in neither list, so
// that each gets a deliberate look.
var (
	kustomizations = []string{
		"etcd",
		"kasd",
		"kasd/overlays/external-etcd",
		"agentd",
		"agentd/overlays/read-only",
	}
	parts = []string{"kasd/base", "kasd/secrets", "agentd/base", "agentd/secrets"}
)

func TestKustomizationsBuildAndCheck(t *testing.T) {
	bins := qkasFlags(t)
	onDisk := listKustomizations(t)
	if listed := sortedCopy(append(append([]string(nil), kustomizations...), parts...)); fmt.Sprint(onDisk) != fmt.Sprint(listed) {
		t.Fatalf("kustomizations on disk %v, listed in the test %v", onDisk, listed)
	}
	fsys := loadManifests(t)
	for _, dir := range kustomizations {
		t.Run(dir, func(t *testing.T) {
			b, err := build(fsys, dir)
			if err != nil {
				t.Fatal(err)
			}
			for _, p := range checkBuild(b, bins) {
				t.Error(p)
			}
			if len(b.objects) == 0 {
				t.Error("empty build")
			}
		})
	}
}

// TestKasdUsesEtcdManifests checks the references between the builds: kasd's etcd endpoints are
// members of the etcd StatefulSet in the same namespace, whose --initial-cluster lists exactly its
// members; agentd dials the port kasd's agent LoadBalancer exposes.
func TestKasdUsesEtcdManifests(t *testing.T) {
	bins := qkasFlags(t)
	fsys := loadManifests(t)
	etcd, err := build(fsys, "etcd")
	if err != nil {
		t.Fatal(err)
	}
	kasd, err := build(fsys, "kasd")
	if err != nil {
		t.Fatal(err)
	}
	agentd, err := build(fsys, "agentd")
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range checkAcross(etcd, kasd, agentd, bins) {
		t.Error(p)
	}
}

// TestEveryManifestFileIsUsed fails on YAML files under manifests/ that no kustomization uses
// (a resource nobody applies, a patch nobody runs).
func TestEveryManifestFileIsUsed(t *testing.T) {
	used := map[string]bool{}
	for _, dir := range append(append([]string(nil), kustomizations...), parts...) {
		data, err := os.ReadFile(filepath.Join(filepath.FromSlash(dir), "kustomization.yaml"))
		if err != nil {
			t.Fatal(err)
		}
		var k struct {
			Resources []string `json:"resources"`
			Patches   []struct {
				Path string `json:"path"`
			} `json:"patches"`
			ConfigMapGenerator []struct {
				Files []string `json:"files"`
			} `json:"configMapGenerator"`
			SecretGenerator []struct {
				Files []string `json:"files"`
			} `json:"secretGenerator"`
		}
		if err := yaml.Unmarshal(data, &k); err != nil {
			t.Fatalf("%s: %v", dir, err)
		}
		add := func(f string) {
			if _, file, ok := strings.Cut(f, "="); ok {
				f = file
			}
			used[path.Join(dir, f)] = true
		}
		for _, r := range k.Resources {
			add(r)
		}
		for _, p := range k.Patches {
			add(p.Path)
		}
		for _, g := range k.ConfigMapGenerator {
			for _, f := range g.Files {
				add(f)
			}
		}
		for _, g := range k.SecretGenerator {
			for _, f := range g.Files {
				add(f)
			}
		}
	}
	err := filepath.WalkDir(".", func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.IsDir() && p == observabilityDir {
			return filepath.SkipDir // prometheus-operator objects: observability_test.go
		}
		if err != nil || d.IsDir() {
			return err
		}
		p = filepath.ToSlash(p)
		if (strings.HasSuffix(p, ".yaml") || strings.HasSuffix(p, ".yml")) &&
			path.Base(p) != "kustomization.yaml" && !used[p] && !isAdminFile(p) {
			t.Errorf("%s: not used by any kustomization", p)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestChecksCatchBrokenReferences breaks one reference at a time and expects the checks to
// notice: each check is asserted to work, not just to run.
func TestChecksCatchBrokenReferences(t *testing.T) {
	bins := qkasFlags(t)
	for _, m := range []struct {
		name, dir, file, old, new, want string
	}{
		{"service targetPort", "kasd", "kasd/base/service.yaml", "targetPort: api", "targetPort: apii", `targetPort "apii"`},
		{"UDP agent port as TCP", "kasd", "kasd/base/deployment.yaml", "containerPort: 8150\n          protocol: UDP", "containerPort: 8150\n          protocol: TCP", "8150"},
		{"selector", "kasd", "kasd/base/service.yaml", "  selector:\n    app.kubernetes.io/name: kasd\n  ports:\n  - name: agent\n    port: 8150\n    targetPort: agent\n    protocol: UDP\n  - name: api", "  selector:\n    app.kubernetes.io/name: kas\n  ports:\n  - name: agent\n    port: 8150\n    targetPort: agent\n    protocol: UDP\n  - name: api", "selects no pods"},
		{"probe port", "kasd", "kasd/base/deployment.yaml", "path: /readyz\n            port: observability", "path: /readyz\n            port: 8999", "8999"},
		{"unknown flag", "kasd", "kasd/base/deployment.yaml", "--instance-id=$(POD_NAME)", "--instance=$(POD_NAME)", `"instance"`},
		{"undefined env var", "kasd", "kasd/base/deployment.yaml", "--instance-id=$(POD_NAME)", "--instance-id=$(MY_POD)", "MY_POD"},
		{"unknown config key", "kasd", "kasd/base/kasd.yaml", "registry-ttl: 10s", "registry-tt: 10s", `"registry-tt"`},
		{"bad duration", "kasd", "kasd/base/kasd.yaml", "registry-ttl: 10s", "registry-ttl: 10", "registry-ttl"},
		{"grace too short", "kasd", "kasd/base/kasd.yaml", "shutdown-grace: 30s", "shutdown-grace: 60s", "terminationGracePeriodSeconds"},
		{"listen port not declared", "kasd", "kasd/base/kasd.yaml", `api-listen: ":8151"`, `api-listen: ":8161"`, "8161"},
		{"secret file not mounted", "kasd", "kasd/base/kasd.yaml", "/etc/kasd/secrets/peer-secret", "/etc/kasd/secret/peer-secret", "peer-secret"},
		{"secret key missing", "kasd", "kasd/base/kasd.yaml", "/etc/kasd/secrets/peer-secret", "/etc/kasd/secrets/peer-secrets", "peer-secrets"},
		{"external secret key", "kasd", "kasd/base/kasd.yaml", "/etc/kasd/tls/tls.key", "/etc/kasd/tls/key.pem", "key.pem"},
		{"unknown secret", "kasd", "kasd/base/deployment.yaml", "secretName: kasd-tls", "secretName: kasd-cert", "kasd-cert"},
		{"pdb selector", "kasd", "kasd/base/pdb.yaml", "app.kubernetes.io/name: kasd", "app.kubernetes.io/name: kas", "PodDisruptionBudget"},
		{"strict decoding", "kasd", "kasd/base/pdb.yaml", "maxUnavailable: 1", "maxUnavailable: 1\n  maxUnavaliable: 1", "maxUnavaliable"},
		{"overlay etcd flag", "kasd/overlays/external-etcd", "kasd/overlays/external-etcd/etcd-args.yaml", "--etcd-ca-file=", "--etcd-cafile=", "etcd-cafile"},
		{"overlay etcd mount", "kasd/overlays/external-etcd", "kasd/overlays/external-etcd/etcd-client-secret.yaml", "mountPath: /etc/kasd/etcd", "mountPath: /etc/etcd", "/etc/kasd/etcd/ca.crt"},
		{"service account", "agentd", "agentd/base/deployment.yaml", "serviceAccountName: agentd", "serviceAccountName: agent", `ServiceAccount "agent"`},
		{"role binding", "agentd", "agentd/base/rbac.yaml", "  kind: Role\n  name: agentd", "  kind: Role\n  name: agent", `Role "agent"`},
		{"cluster role binding subject", "agentd/overlays/read-only", "agentd/overlays/read-only/cluster-read.yaml", "- kind: ServiceAccount\n  name: agentd", "- kind: ServiceAccount\n  name: agent", `ServiceAccount "qkas-agent/agent"`},
		{"agentd config key", "agentd", "agentd/base/agentd.yaml", "kas-connections: 2", "connections: 2", `"connections"`},
		{"agentd readiness path", "agentd", "agentd/base/deployment.yaml", "path: /readyz", "path: /ready", "/ready"},
		{"statefulset serviceName", "etcd", "etcd/statefulset.yaml", "serviceName: etcd", "serviceName: etcd-peers", "etcd-peers"},
	} {
		t.Run(m.name, func(t *testing.T) {
			fsys := loadManifests(t)
			p := path.Join(root, m.file)
			data, err := fsys.ReadFile(p)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Contains(data, []byte(m.old)) {
				t.Fatalf("%s does not contain %q: update the mutation", m.file, m.old)
			}
			if err := fsys.WriteFile(p, bytes.Replace(data, []byte(m.old), []byte(m.new), 1)); err != nil {
				t.Fatal(err)
			}
			var problems []string
			b, err := build(fsys, m.dir)
			if err != nil {
				problems = []string{err.Error()}
			} else {
				problems = checkBuild(b, bins)
			}
			for _, p := range problems {
				if strings.Contains(p, m.want) {
					return
				}
			}
			t.Errorf("no problem mentioning %q; got %q", m.want, problems)
		})
	}
	t.Run("etcd endpoint of no member", func(t *testing.T) {
		fsys := loadManifests(t)
		p := path.Join(root, "kasd/base/kasd.yaml")
		data, _ := fsys.ReadFile(p)
		_ = fsys.WriteFile(p, bytes.Replace(data, []byte("http://etcd-2.etcd:2379"), []byte("http://etcd-3.etcd:2379"), 1))
		etcd, err1 := build(fsys, "etcd")
		kasd, err2 := build(fsys, "kasd")
		agentd, err3 := build(fsys, "agentd")
		if err1 != nil || err2 != nil || err3 != nil {
			t.Fatal(err1, err2, err3)
		}
		if ps := checkAcross(etcd, kasd, agentd, bins); !containsAny(ps, "etcd-3.etcd") {
			t.Errorf("no problem about etcd-3.etcd: %q", ps)
		}
	})
}

func containsAny(problems []string, s string) bool {
	for _, p := range problems {
		if strings.Contains(p, s) {
			return true
		}
	}
	return false
}

func isAdminFile(p string) bool {
	_, ok := adminFiles[p]
	return ok
}

func sortedCopy(s []string) []string {
	c := append([]string(nil), s...)
	sort.Strings(c)
	return c
}

func listKustomizations(t *testing.T) []string {
	var dirs []string
	err := filepath.WalkDir(".", func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.IsDir() && p == observabilityDir {
			return filepath.SkipDir // prometheus-operator objects: observability_test.go
		}
		if err == nil && !d.IsDir() && d.Name() == "kustomization.yaml" {
			dirs = append(dirs, filepath.ToSlash(filepath.Dir(p)))
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(dirs)
	return dirs
}

// loadManifests copies manifests/ into an in-memory file system under root, leaving out the
// admin's files under */secrets/ and putting the stand-ins of adminFiles in their place.
func loadManifests(t *testing.T) filesys.FileSystem {
	t.Helper()
	fsys := filesys.MakeFsInMemory()
	err := filepath.WalkDir(".", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		slash := filepath.ToSlash(p)
		if strings.HasSuffix(slash, ".go") {
			return nil
		}
		if base := path.Base(slash); path.Base(path.Dir(slash)) == "secrets" && base != "kustomization.yaml" && base != "README.md" {
			return nil // the admin's files: never read them
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		return fsys.WriteFile(path.Join(root, slash), data)
	})
	if err != nil {
		t.Fatal(err)
	}
	for p, content := range adminFiles {
		if err := fsys.WriteFile(path.Join(root, p), []byte(content)); err != nil {
			t.Fatal(err)
		}
	}
	return fsys
}

// flagInfo is one flag of a binary, from its -h output.
type flagInfo struct {
	typ string // "" for a boolean flag, else the type name -h shows (string, duration, int, value, …)
	def string // default value, "" if none is shown
}

var (
	binsOnce sync.Once
	binFlags map[string]map[string]flagInfo
	binsErr  error
)

// qkasFlags builds kasd and agentd (or takes them from $QKAS_BIN_DIR) and returns their flags,
// keyed by binary name.
func qkasFlags(t *testing.T) map[string]map[string]flagInfo {
	t.Helper()
	binsOnce.Do(func() {
		dir := os.Getenv("QKAS_BIN_DIR")
		if dir == "" {
			var err error
			// Not t.TempDir: the binaries are shared by every test of this package.
			if dir, err = os.MkdirTemp("", "qkas-manifests-test"); err != nil {
				binsErr = err
				return
			}
			defer os.RemoveAll(dir)
			for name, pkg := range map[string]string{"kasd": "./kasd/cmd/kasd", "agentd": "./agentd/cmd/agentd"} {
				cmd := exec.Command("go", "build", "-o", filepath.Join(dir, name), pkg)
				cmd.Dir = ".."
				if out, err := cmd.CombinedOutput(); err != nil {
					binsErr = fmt.Errorf("go build %s: %v\n%s", pkg, err, out)
					return
				}
			}
		}
		binFlags = map[string]map[string]flagInfo{}
		for _, name := range []string{"kasd", "agentd"} {
			out, _ := exec.Command(filepath.Join(dir, name), "-h").CombinedOutput() // -h exits 0 or 2
			flags := parseUsage(string(out))
			if len(flags) < 5 {
				binsErr = fmt.Errorf("%s -h: found %d flags in %q", name, len(flags), out)
				return
			}
			binFlags[name] = flags
		}
	})
	if binsErr != nil {
		t.Fatal(binsErr)
	}
	return binFlags
}

var (
	usageFlag    = regexp.MustCompile(`^  -([a-zA-Z0-9][-a-zA-Z0-9]*)(?: (\S+))?$`)
	usageDefault = regexp.MustCompile(`\(default (.*)\)$`)
)

// parseUsage reads the flag package's PrintDefaults format.
func parseUsage(out string) map[string]flagInfo {
	flags := map[string]flagInfo{}
	var last string
	for _, line := range strings.Split(out, "\n") {
		if m := usageFlag.FindStringSubmatch(line); m != nil {
			last = m[1]
			flags[last] = flagInfo{typ: m[2]}
			continue
		}
		if last != "" && strings.HasPrefix(line, "    \t") {
			if m := usageDefault.FindStringSubmatch(line); m != nil {
				f := flags[last]
				f.def = m[1]
				if s, err := strconv.Unquote(f.def); err == nil {
					f.def = s
				}
				flags[last] = f
			}
		}
	}
	return flags
}

// docs/kubernetes.md has the admin create every namespace the manifests put objects in: apply -k
// fails on a cluster without it.
func TestDocsCreateNamespaces(t *testing.T) {
	doc, err := os.ReadFile(filepath.Join("..", "docs", "kubernetes.md"))
	if err != nil {
		t.Fatal(err)
	}
	for obj := range external {
		ns, ok := strings.CutPrefix(obj, "Namespace/")
		if !ok {
			continue
		}
		if !regexp.MustCompile(`kubectl (--context \S+ )?create namespace ` + regexp.QuoteMeta(ns) + `\b`).Match(doc) {
			t.Errorf("docs/kubernetes.md never says kubectl create namespace %s", ns)
		}
	}
}
