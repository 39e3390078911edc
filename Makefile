# qkas — see README.md.
GO        ?= go
VERSION   ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS   := -s -w -X main.version=$(VERSION)
BIN       := bin
FUZZTIME  ?= 10s
# Minimizing a new corpus entry can stall a short run; failures are still minimized.
FUZZMINIMIZETIME ?= 5s
# Packages with fuzz targets, for `make fuzz`.
FUZZ_PKGS := ./api ./auth ./gitlab ./httpstream ./kasd ./agentd ./agentd/kubernetes ./registry ./internal/cliconfig

.PHONY: all build test test-short vet fuzz demo bench bench-quick images clean chaos

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
test: vet build
	$(GO) test -race -count=1 -timeout 18m ./...

test-short:
	$(GO) test -count=1 -short ./...

# Run every fuzz target for FUZZTIME each.
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
	  echo "  $(DOCKER) build --build-arg VERSION=$(VERSION) -t $(IMAGE_REPO):$(VERSION) ."; \
	  exit 1; }
	$(DOCKER) build --build-arg VERSION=$(VERSION) -t $(IMAGE_REPO):$(VERSION) .

# A local fleet from one command: embedded etcd, two kasd, one agentd and a sample service;
# requests through the local and the forwarded route. DEMO_KEEP=1 keeps it running.
demo: build
	$(GO) run ./e2e/demo -bin $(BIN)

# Benchmarks (see benchmarks/README.md): real kasd/agentd processes against their baselines; results in
# benchmarks/results/<timestamp>/. Head-of-line needs root and nftables (installed when missing).
BENCH_NFT = command -v nft >/dev/null 2>&1 || { test "$$(id -u)" = 0 && (apt-get install -y nftables >/dev/null 2>&1 || (apt-get update >/dev/null && apt-get install -y nftables >/dev/null)); } || echo 'nft missing: head-of-line will be skipped'

bench: build
	@$(BENCH_NFT)
	$(GO) run ./benchmarks/cmd/qkasbench --preset full --bin $(BIN)

bench-quick: build
	@$(BENCH_NFT)
	$(GO) run ./benchmarks/cmd/qkasbench --preset quick --bin $(BIN) --latest benchmarks/results/latest --readme benchmarks/README.md

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
