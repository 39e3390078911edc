#!/usr/bin/env bash
# The README quickstart as a script: one kasd, one agentd exposing a service, a client JWT, and a
# request through the tunnel with curl. Run `make build` first. e2e.TestQuickstartScript runs it.
#
# Environment (all optional):
#   BIN           where kasd, agentd and kasctl are (default: bin/ of this repository)
#   AGENT_PORT    kasd's UDP port for agents           (default 8150)
#   API_PORT      kasd's client API port               (default 8151)
#   KASD_OBS_PORT kasd's /metrics, /readyz port         (default 8153)
#   AGENT_OBS_PORT agentd's /metrics, /readyz port      (default 8154)
#   PEER_PORT     kasd's UDP port for other kasd replicas (default 8152)
#   STATE         directory for the secrets, the token and kasd's data (default: a temporary
#                 directory, removed on exit; a directory you name is kept)
#   KASD_FLAGS, AGENTD_FLAGS  more flags, split on spaces (the e2e test uses them to isolate ports)
#
# The agent exposes kasd's own observability endpoint as its service "metrics", so the demo needs
# nothing but the three binaries and curl. Safe defaults: every port is bound to 127.0.0.1 (the
# peer port too: no listener of this kasd is reachable from another machine), and every generated
# secret lives in $STATE, never in the working directory (which may be a git checkout). The
# processes are stopped on exit, whatever happens.
set -euo pipefail

BIN=${BIN:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/bin}
AGENT_PORT=${AGENT_PORT:-8150}
API_PORT=${API_PORT:-8151}
KASD_OBS_PORT=${KASD_OBS_PORT:-8153}
AGENT_OBS_PORT=${AGENT_OBS_PORT:-8154}
PEER_PORT=${PEER_PORT:-8152}
read -r -a kasd_flags <<<"${KASD_FLAGS:-}"
read -r -a agentd_flags <<<"${AGENTD_FLAGS:-}"

for b in kasd agentd kasctl; do
  if [[ ! -x $BIN/$b ]]; then
    echo "quickstart: $BIN/$b not found; run 'make build' first" >&2
    exit 1
  fi
done
command -v curl >/dev/null || { echo "quickstart: curl is needed" >&2; exit 1; }
PATH=$BIN:$PATH

keep_state=1
if [[ -z ${STATE:-} ]]; then
  STATE=$(mktemp -d "${TMPDIR:-/tmp}/qkas-quickstart.XXXXXX")
  keep_state=0
fi
mkdir -p "$STATE"
chmod 700 "$STATE"
pids=()
cleanup() {
  local status=$?
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  if ((status != 0)); then
    for log in "$STATE"/*.log; do
      [[ -f $log ]] && { echo "--- $log" >&2; tail -n 20 "$log" >&2; }
    done
  fi
  ((keep_state)) || rm -rf "$STATE"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
cd "$STATE" # every file below is created here, never in the directory the script was run from

# wait_ready PID URL: poll until URL answers 200 (a daemon's /readyz), for up to 30 s, unless
# process PID exits first.
wait_ready() {
  for _ in $(seq 150); do
    curl -fsS -o /dev/null "$2" 2>/dev/null && return 0
    kill -0 "$1" 2>/dev/null || { echo "quickstart: process $1 exited" >&2; return 1; }
    sleep 0.2
  done
  echo "quickstart: $2 not ready after 30s" >&2
  return 1
}

echo "== secrets"
kasctl secret -o jwt.secret
kasctl agent-token demo --token-out demo.token --tokens-file tokens.yaml

echo "== kasd"
kasd --agent-tokens-file tokens.yaml --api-jwt-secret-file jwt.secret --data-dir kasd-data \
  --agent-listen 127.0.0.1:$AGENT_PORT --api-listen 127.0.0.1:$API_PORT \
  --observability-listen 127.0.0.1:$KASD_OBS_PORT --peer-listen 127.0.0.1:$PEER_PORT \
  ${kasd_flags[@]+"${kasd_flags[@]}"} 2> kasd.log &
pids+=($!)
wait_ready $! http://127.0.0.1:$KASD_OBS_PORT/readyz # kasd has written kasd-data/ca.pem

echo "== agentd"
agentd --kas-address 127.0.0.1:$AGENT_PORT --token-file demo.token --ca-file kasd-data/ca.pem \
  --service metrics=http://127.0.0.1:$KASD_OBS_PORT \
  --observability-listen 127.0.0.1:$AGENT_OBS_PORT ${agentd_flags[@]+"${agentd_flags[@]}"} 2> agentd.log &
pids+=($!)
wait_ready $! http://127.0.0.1:$AGENT_OBS_PORT/readyz # agentd is connected to kasd

echo "== request through kasd"
JWT=$(kasctl jwt --secret-file jwt.secret --agents demo)
curl -fsS -H "Authorization: Bearer $JWT" \
  http://127.0.0.1:$API_PORT/api/v1/agents/demo/proxy/metrics/healthz
curl -fsS -H "Authorization: Bearer $JWT" \
  http://127.0.0.1:$API_PORT/api/v1/agents/demo/proxy/metrics/metrics | grep '^kasd_connected_agents '
curl -fsS -H "Authorization: Bearer $JWT" http://127.0.0.1:$API_PORT/api/v1/agents
echo

echo "== quickstart ok"
