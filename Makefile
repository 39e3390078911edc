# qkas — see README.md.
GO        ?= go
VERSION   ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
# --version and the *_build_info metrics report both (internal/buildinfo).
REVISION  ?= $(shell git rev-parse HEAD 2>/dev/null)
LDFLAGS   := -s -w -X main.version=$(VERSION) -X main.revision=$(REVISION)
BIN       := bin
# go.mod names toolchain go1.26.10 (standard-library fixes govulncheck asks for; docs/security.md).
# Go installs that default to GOTOOLCHAIN=local (Debian's, this machine's go.env) would ignore it:
# auto makes the go command fetch it through the module proxy, or keep a newer local Go.
export GOTOOLCHAIN ?= auto
# A count, not a duration: with a duration, Go before 1.27 can fail a target that found nothing
# with a bare "context deadline exceeded" when a worker is mid-input as the time ends
# (golang/go#75804, seen here on a loaded machine). FUZZTIME=30s still works for longer runs.
FUZZTIME  ?= 20000x
# Minimizing a new corpus entry can stall a short run; failures are still minimized.
FUZZMINIMIZETIME ?= 5s
# Packages with fuzz targets, for `make fuzz`.
FUZZ_PKGS := ./api ./auth ./internal/rawio ./internal/httpserve ./gitlab ./httpstream ./kasd ./agentd ./agentd/kubernetes ./registry ./internal/cliconfig ./quic ./internal/upstream ./benchmarks/fleetsim

.PHONY: test-quic-patch all build test test-short vet staticcheck vulncheck fuzz demo bench bench-quick bench-scale images clean chaos

all: build

build:
	@mkdir -p $(BIN)
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/kasd ./kasd/cmd/kasd
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/agentd ./agentd/cmd/agentd
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/kasctl ./kasctl

vet:
	$(GO) vet ./...
	@test -z "$$(gofmt -l $$(git ls-files '*.go' ':!third_party'))" || (gofmt -l $$(git ls-files '*.go' ':!third_party'); echo 'gofmt needed'; exit 1)

# The whole suite: unit, fuzz seeds, in-process integration over real QUIC and etcd, and
# process-level end-to-end tests with the real binaries. Race detector on.
test: vet staticcheck vulncheck build test-quic-patch
	$(GO) test -race -count=1 -timeout 18m ./...

# The carried quic-go patch's tests and the upstream unit tests it must keep passing
# (third_party/README.md). A module of its own, so ./... above does not reach it. No race
# detector: it changes stack frames, and TestRunLoopStackStaysSmall measures them.
test-quic-patch:
	cd third_party/quic-go && $(GO) test -count=1 -timeout 5m . ./internal/...

# Static checks (docs/security.md). Both tools come through the module proxy at a fixed version,
# without touching go.mod.
STATICCHECK ?= $(GO) run honnef.co/go/tools/cmd/staticcheck@v0.8.2
staticcheck:
	$(STATICCHECK) ./...

# govulncheck against a vulnerability database built here: vuln.go.dev is out of reach, so the
# database is built (once per VULNDB_VERSION, cached in VULNDB_DIR; the first build compiles
# gendb, 1-3 minutes) from golang.org/x/vulndb's data/osv, which the module proxy serves.
# Part of `make test`: it fails on any vulnerability the code reaches (docs/security.md).
GOVULNCHECK    ?= $(GO) run golang.org/x/vuln/cmd/govulncheck@v1.9.0
VULNDB_VERSION ?= v0.0.0-20261105234957-e22db6528018
VULNDB_DIR     ?= $(HOME)/.cache/qkas-vulndb/$(VULNDB_VERSION)
vulncheck:
	@test -f $(VULNDB_DIR)/db/index/db.json || { set -e; \
	  echo "building the vulnerability database from golang.org/x/vulndb@$(VULNDB_VERSION)"; \
	  rm -rf $(VULNDB_DIR); mkdir -p $(VULNDB_DIR)/repo/data; \
	  src=$$(cd $(VULNDB_DIR) && $(GO) mod download -json golang.org/x/vulndb@$(VULNDB_VERSION) | sed -n 's/^\t"Dir": "\(.*\)",$$/\1/p'); \
	  cp -r "$$src/data/osv" $(VULNDB_DIR)/repo/data/ && chmod -R u+w $(VULNDB_DIR)/repo; \
	  git -C $(VULNDB_DIR)/repo init -q && git -C $(VULNDB_DIR)/repo add -A && \
	    git -C $(VULNDB_DIR)/repo -c user.name=qkas -c user.email=qkas@localhost commit -qm "vulndb $(VULNDB_VERSION)"; \
	  cd $(VULNDB_DIR) && $(GO) run golang.org/x/vulndb/cmd/gendb@$(VULNDB_VERSION) -repo repo -out db; }
	$(GOVULNCHECK) -db file://$(VULNDB_DIR)/db ./...

test-short:
	$(GO) test -count=1 -short ./...

# Run every fuzz target for FUZZTIME each (inputs, or a duration).
fuzz:
	@for pkg in $(FUZZ_PKGS); do \
	  for f in $$($(GO) test -list '^Fuzz' $$pkg | grep '^Fuzz'); do \
	    echo "== $$pkg $$f"; $(GO) test -run='^$$' -fuzz="^$$f$$" -fuzztime=$(FUZZTIME) -fuzzminimizetime=$(FUZZMINIMIZETIME) $$pkg || exit 1; \
	  done; \
	done

# One container image with kasd, agentd and kasctl (Dockerfile; the manifests choose the binary
# with `command`). Push it yourself: $(DOCKER) push $(IMAGE_REPO):$(VERSION)
IMAGE_REPO ?= registry.example.com/qkas
DOCKER     ?= docker
images:
	@$(DOCKER) info >/dev/null 2>&1 || { \
	  echo "make images: no container engine ('$(DOCKER) info' failed). Build where one runs:"; \
	  echo "  $(DOCKER) build --build-arg VERSION=$(VERSION) --build-arg REVISION=$(REVISION) -t $(IMAGE_REPO):$(VERSION) ."; \
	  exit 1; }
	$(DOCKER) build --build-arg VERSION=$(VERSION) --build-arg REVISION=$(REVISION) -t $(IMAGE_REPO):$(VERSION) .

# A local fleet from one command: embedded etcd, two kasd, one agentd and a sample service;
# requests through the local and the forwarded route. DEMO_KEEP=1 keeps it running.
demo: build
	@$(GO) build -o $(BIN)/qkas-demo ./e2e/demo
	$(BIN)/qkas-demo -bin $(BIN)

# Benchmarks (see benchmarks/README.md): real kasd/agentd processes against their baselines; results in
# benchmarks/results/<timestamp>/ (git-ignored: a run changes no tracked file), REPORT.md first.
# Head-of-line needs root and nftables (installed when missing).
BENCH_NFT = command -v nft >/dev/null 2>&1 || { test "$$(id -u)" = 0 && (apt-get install -y nftables >/dev/null 2>&1 || (apt-get update >/dev/null && apt-get install -y nftables >/dev/null)); } || echo 'nft missing: head-of-line will be skipped'

bench: build
	@$(BENCH_NFT)
	$(GO) run ./benchmarks/cmd/qkasbench --preset full --bin $(BIN)

bench-quick: build
	@$(BENCH_NFT)
	$(GO) run ./benchmarks/cmd/qkasbench --preset quick --bin $(BIN) --latest benchmarks/results/last

# Scale (issue 14, docs/scale.md): fleets of real agentd agents (benchmarks/fleetsim, one UDP socket
# each, in a network namespace of their own) against one kasd, at 1k, 5k, 10k, 20k and 50k agents up
# to AGENTS (the largest step); SCALE_RATE= agents started per second (default 1000: lower it where
# the fleet shares kasd's cores); SCALE_KASD_CPUS= the CPUs kasd alone runs on, the fleet and the
# runner getting the others (default CPU 0 on a machine of two or more: the agents of a real fleet
# run elsewhere; SCALE_KASD_CPUS= with nothing shares every CPU); SCALE_SETTLE= how long the fleet
# idles before the idle window (default 100s; e.g. 8m for memory at steady state). Needs root
# (namespaces); results in benchmarks/results/scale-last.
AGENTS ?= 50000
SCALE_KASD_CPUS ?= $(shell [ "$$(nproc)" -ge 2 ] && echo 0)
SCALE_STEPS = $(shell for s in 1000 5000 10000 20000 50000; do [ $$s -lt $(AGENTS) ] && printf '%s,' $$s; done)$(AGENTS)

bench-scale: build
	@$(BENCH_NFT)
	$(GO) run ./benchmarks/cmd/qkasbench --preset scale --scenarios scale --scale-agents $(SCALE_STEPS) $(if $(SCALE_RATE),--scale-start-rate $(SCALE_RATE)) $(if $(SCALE_KASD_CPUS),--scale-kasd-cpus $(SCALE_KASD_CPUS)) $(if $(SCALE_SETTLE),--scale-settle $(SCALE_SETTLE)) --bin $(BIN) --latest benchmarks/results/scale-last

clean:
	rm -rf $(BIN) kasd-data demo-data

# The fault suite (issue 11, chaos/): real kasd, agentd and a 3-member etcd (Debian's
# etcd-server, installed when missing), each in its own network namespace, under load; every
# fault has a bound on the requests it may cost. Needs root. CHAOS_FLAGS=-quick: < 2 min.
CHAOS_FLAGS ?=
chaos:
	@command -v etcd >/dev/null 2>&1 || { test "$$(id -u)" = 0 && (apt-get install -y etcd-server >/dev/null 2>&1 || (apt-get update >/dev/null && apt-get install -y etcd-server >/dev/null)); } || { echo 'etcd missing: apt-get install etcd-server'; exit 1; }
	@command -v nft >/dev/null 2>&1 || { test "$$(id -u)" = 0 && (apt-get install -y nftables >/dev/null 2>&1 || (apt-get update >/dev/null && apt-get install -y nftables >/dev/null)); } || { echo 'nft missing: apt-get install nftables'; exit 1; }
	$(GO) run ./chaos $(CHAOS_FLAGS)
