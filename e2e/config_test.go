package e2e

import (
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestConfigFile starts kasd and agentd from --config YAML files (keys are flag names; agentd's
// services are a map) and checks that a flag on the command line wins over the file.
func TestConfigFile(t *testing.T) {
	skipShort(t)
	dir := t.TempDir()
	web := startService(t, "web")
	sec := newSecrets(t, dir, "demo")

	agentAddr, apiAddr, obsAddr := freeAddr(t, "udp"), freeAddr(t, "tcp"), freeAddr(t, "tcp")
	fileAPIAddr := freeAddr(t, "tcp") // in the file, overridden by --api-listen
	writeFile(t, filepath.Join(dir, "kasd.yaml"), fmt.Sprintf(`# kasd configuration: keys are flag names
agent-listen: %s
api-listen: %s
observability-listen: %s
agent-tokens-file: tokens.yaml
api-jwt-secret-file: jwt.secret
data-dir: kasd-data
route-timeout: 2s
log-level: info
`, agentAddr, fileAPIAddr, obsAddr))
	kasd := startKasd(t, KasdOpts{
		Dir:       dir,
		Config:    "kasd.yaml",
		InConfig:  true,
		DataDir:   "kasd-data",
		AgentAddr: agentAddr, APIAddr: apiAddr, ObsAddr: obsAddr,
		Args: []string{"--api-listen", apiAddr},
	})
	if c, err := net.DialTimeout("tcp", fileAPIAddr, 5*time.Second); err == nil {
		c.Close()
		t.Errorf("kasd listens on the config file's api-listen %s although --api-listen %s was given", fileAPIAddr, apiAddr)
	}

	agentObs := freeAddr(t, "tcp")
	writeFile(t, filepath.Join(dir, "agentd.yaml"), fmt.Sprintf(`# agentd configuration: keys are flag names
kas-address: %s
token-file: demo.token
ca-file: kasd-data/ca.pem
observability-listen: %s
replica: from-file
services:
  web: %s
`, agentAddr, agentObs, web.URL))
	agent := startAgentd(t, AgentdOpts{
		Dir:     dir,
		Config:  "agentd.yaml",
		ObsAddr: agentObs, // also in the file; passing it again is harmless
		Args:    []string{"--replica", "from-flag"},
	})

	jwt := mintJWT(t, sec.JWTSecretFile, "--agents", "demo")
	if r := get(t, kasd.ProxyURL("demo", "web", "/from-config"), jwt); r.Status != 200 || r.Body != "hello from web: GET /from-config" {
		t.Fatalf("GET through kasd: %d %q", r.Status, r.Body)
	}
	r := get(t, kasd.APIURL()+"/api/v1/agents", jwt)
	if !strings.Contains(r.Body, `"replica":"from-flag"`) || strings.Contains(r.Body, "from-file") {
		t.Errorf("--replica on the command line did not win over the file: %s", r.Body)
	}
	// A JWT limited to other agents is refused: the token file and the config wire the same auth.
	if r := get(t, kasd.ProxyURL("demo", "web", "/"), mintJWT(t, sec.JWTSecretFile, "--agents", "other")); r.Status != 403 {
		t.Errorf("JWT for agent other: %d %s", r.Status, r.Body)
	}
	if code := agent.Stop(t); code != 0 {
		t.Errorf("agentd exit code %d after SIGTERM", code)
	}
	if code := kasd.Stop(t); code != 0 {
		t.Errorf("kasd exit code %d after SIGTERM", code)
	}
}
