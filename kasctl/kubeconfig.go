package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"k8s.io/apimachinery/pkg/runtime"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	clientcmdlatest "k8s.io/client-go/tools/clientcmd/api/latest"
	"sigs.k8s.io/yaml"

	"github.com/qkas/qkas/auth"
)

// defaultServer is kasd's client API on this machine (kasd --api-listen :8151).
const defaultServer = "https://localhost:8151"

func runKubeconfig(_ context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("kubeconfig", "--agent ID [--server URL] [--secret-file FILE] [-o FILE] [flags]",
		`Writes a kubeconfig for the Kubernetes API of agent ID through kasd: the cluster's server is
kasd's proxy URL for the agent's kubernetes service (URL/api/v1/agents/ID/proxy/kubernetes) and
the user runs "kasctl credential" as an exec credential plugin, which mints client JWTs with
--secret-file, caches them and renews them before they expire. The token flags (--ttl,
--subject, --impersonate-user, ...) are written into the plugin's arguments.
  kasctl kubeconfig --agent my-agent --server https://kas.example.com:8151 \
      --secret-file ~/qkas/api-jwt-secret --certificate-authority kas-ca.crt -o ~/.kube/config
  kubectl --context qkas-my-agent get pods
With -o FILE an existing kubeconfig is kept: its cluster, user and context named --name are
replaced, the others left alone, and --name becomes the current context.`, stderr)
	var tf tokenFlags
	tf.register(fs)
	agent := fs.String("agent", "", "the agent `ID` whose cluster the kubeconfig reaches (required)")
	server := fs.String("server", defaultServer, "kasd's client API base `URL` (with the path prefix of an ingress, if any)")
	service := fs.String("service", "kubernetes", "the agent's `service` that proxies its Kubernetes API")
	name := fs.String("name", "", "the `name` of the cluster, user and context written (default qkas-ID)")
	namespace := fs.String("namespace", "", "the context's default `namespace`")
	ca := fs.String("certificate-authority", "", "a PEM `FILE` of the CA that signed kasd's API certificate, embedded in the kubeconfig (default: the system's roots)")
	tlsServerName := fs.String("tls-server-name", "", "the `name` kasd's certificate is checked against, if not the server URL's host")
	insecure := fs.Bool("insecure-skip-tls-verify", false, "do not check kasd's certificate (tests only: the token can be stolen)")
	cacheDir := fs.String("cache-dir", "", "the plugin's token cache `DIR` (default: kasctl credential's, under the user's cache directory)")
	command := fs.String("kasctl", "", "the kasctl `command` the plugin runs (default: this kasctl, by name if it is the one on PATH, else by absolute path)")
	out := fs.String("out", "", "write the kubeconfig to `FILE` (mode 0600), merging into it if it exists, instead of printing it")
	fs.StringVar(out, "o", "", "shorthand for --out `FILE`")
	if _, err := parseArgs(fs, args, 0); err != nil {
		return err
	}
	if err := tf.check(fs, stderr); err != nil {
		return err
	}
	if *agent == "" {
		return flagError(fs, "--agent is required")
	}
	if err := auth.ValidateAgentID(*agent); err != nil {
		return fmt.Errorf("--agent: %w", err)
	}
	if *service == "" || strings.ContainsAny(*service, "/?#%") {
		return flagError(fs, "--service must be a service name")
	}
	if *name == "" {
		*name = "qkas-" + *agent
	}
	proxyURL, err := agentProxyURL(*server, *agent, *service)
	if err != nil {
		return err
	}
	if strings.HasPrefix(proxyURL, "http:") {
		fmt.Fprintln(stderr, "kasctl: warning: --server is http://: client JWTs would cross the network in clear; kasd's API should be https://")
	}
	// The plugin runs with kubectl's working directory: paths must be absolute.
	if tf.secretFile != "" {
		if tf.secretFile, err = filepath.Abs(tf.secretFile); err != nil {
			return err
		}
		if _, err := auth.ReadSecretFile(tf.secretFile); err != nil {
			return err
		}
	} else {
		fmt.Fprintln(stderr, "kasctl: warning: no --secret-file: the plugin will need KASCTL_SECRET_FILE in kubectl's environment")
	}
	credArgs := append([]string{"credential", "--agents=" + *agent}, tf.args()...)
	if *cacheDir != "" {
		d, err := filepath.Abs(*cacheDir)
		if err != nil {
			return err
		}
		credArgs = append(credArgs, "--cache-dir="+d)
	}
	if *command == "" {
		if *command, err = selfCommand(); err != nil {
			return err
		}
	}

	cluster := clientcmdapi.NewCluster()
	cluster.Server = proxyURL
	cluster.TLSServerName = *tlsServerName
	cluster.InsecureSkipTLSVerify = *insecure
	if *ca != "" {
		if cluster.CertificateAuthorityData, err = os.ReadFile(*ca); err != nil {
			return fmt.Errorf("--certificate-authority: %w", err)
		}
	}
	user := clientcmdapi.NewAuthInfo()
	user.Exec = &clientcmdapi.ExecConfig{
		APIVersion:      execCredentialAPIVersion,
		Command:         *command,
		Args:            credArgs,
		InstallHint:     "kasctl credential mints the tokens for kasd: install kasctl (qkas) or fix the path in this kubeconfig (kasctl kubeconfig --kasctl)",
		InteractiveMode: clientcmdapi.NeverExecInteractiveMode,
	}
	kctx := clientcmdapi.NewContext()
	kctx.Cluster, kctx.AuthInfo, kctx.Namespace = *name, *name, *namespace

	cfg := clientcmdapi.NewConfig()
	if *out != "" {
		if cfg, err = loadKubeconfig(*out); err != nil {
			return err
		}
	}
	cfg.Clusters[*name] = cluster
	cfg.AuthInfos[*name] = user
	cfg.Contexts[*name] = kctx
	cfg.CurrentContext = *name
	b, err := encodeKubeconfig(cfg)
	if err != nil {
		return err
	}
	if *out == "" {
		_, err = stdout.Write(b)
		return err
	}
	if err := writePrivateFile(*out, b); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "# context %s written to %s (kubectl --kubeconfig %s --context %s ...)\n", *name, *out, *out, *name)
	return nil
}

// agentProxyURL is base's URL for service of agent: the path of base (an ingress prefix) is kept.
func agentProxyURL(base, agent, service string) (string, error) {
	u, err := url.Parse(base)
	if err != nil {
		return "", fmt.Errorf("--server: %w", err)
	}
	if (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" || u.RawQuery != "" || u.Fragment != "" || u.User != nil {
		return "", fmt.Errorf("--server %q: want https://HOST[:PORT][/PREFIX]", base)
	}
	u.Path = strings.TrimSuffix(u.Path, "/") + "/api/v1/agents/" + agent + "/proxy/" + service
	u.RawPath = ""
	return u.String(), nil
}

// selfCommand is how the kubeconfig names this kasctl: "kasctl" when that is what PATH finds
// (the kubeconfig then survives an upgrade that moves the binary), else its absolute path.
func selfCommand() (string, error) {
	self, err := os.Executable()
	if err != nil {
		return "", fmt.Errorf("finding kasctl's path (give --kasctl): %w", err)
	}
	if onPath, err := exec.LookPath("kasctl"); err == nil {
		a, errA := os.Stat(self)
		b, errB := os.Stat(onPath)
		if errA == nil && errB == nil && os.SameFile(a, b) {
			return "kasctl", nil
		}
	}
	return self, nil
}

// loadKubeconfig reads the kubeconfig at path, or returns an empty one if there is none.
func loadKubeconfig(path string) (*clientcmdapi.Config, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return clientcmdapi.NewConfig(), nil
	}
	if err != nil {
		return nil, err
	}
	if len(strings.TrimSpace(string(b))) == 0 {
		return clientcmdapi.NewConfig(), nil
	}
	obj, _, err := clientcmdlatest.Codec.Decode(b, nil, clientcmdapi.NewConfig())
	if err != nil {
		return nil, fmt.Errorf("%s: not a kubeconfig: %w", path, err)
	}
	cfg, ok := obj.(*clientcmdapi.Config)
	if !ok {
		return nil, fmt.Errorf("%s: not a kubeconfig (%T)", path, obj)
	}
	return cfg, nil
}

// encodeKubeconfig writes cfg as kubectl does: the v1 Config in YAML.
func encodeKubeconfig(cfg *clientcmdapi.Config) ([]byte, error) {
	j, err := runtime.Encode(clientcmdlatest.Codec, cfg)
	if err != nil {
		return nil, err
	}
	return yaml.JSONToYAML(j)
}

// writePrivateFile writes b to path through a new 0600 file renamed over it: a kubeconfig can hold
// credentials, and kubectl reading it meanwhile sees the old or the new one whole.
func writePrivateFile(path string, b []byte) error {
	if p, err := filepath.EvalSymlinks(path); err == nil {
		path = p // a symlinked ~/.kube/config stays a symlink
	}
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return err
	}
	_, err = f.Write(b)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Chmod(f.Name(), 0o600)
	}
	if err == nil {
		err = os.Rename(f.Name(), path)
	}
	if err != nil {
		os.Remove(f.Name())
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}
