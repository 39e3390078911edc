# syntax=docker/dockerfile:1
#
# One image with kasd, agentd and kasctl: `make images` or
#   docker build --build-arg VERSION=v0.1.0 --build-arg REVISION=$(git rev-parse HEAD) -t registry.example.com/qkas:v0.1.0 .
# The Kubernetes manifests pick the binary with the container's `command`
# (/usr/local/bin/kasd or /usr/local/bin/agentd). There is no ENTRYPOINT, so the arguments of
# `docker run` name the binary: `docker run --rm IMAGE kasctl secret`, `docker run IMAGE agentd -h`;
# with none, kasd runs.
# One image rather than a target per binary: one build, one tag to pin and scan, and kasctl next
# to the servers (kubectl exec ... -- kasctl). The binaries are static and small, so the
# binary a pod does not run costs a few MB of shared layer.

# The builder runs on the build host's platform and cross-compiles (buildx --platform).
FROM --platform=$BUILDPLATFORM golang:1.26 AS build
ARG TARGETOS
ARG TARGETARCH
ARG VERSION=dev
# The commit, for --version and the *_build_info metrics (`make images` passes git rev-parse
# HEAD): .git is not in the build context, so Go cannot stamp it.
ARG REVISION=
WORKDIR /src
COPY go.mod go.sum ./
# go.mod replaces quic-go with the patched copy in third_party/ (see third_party/README.md).
COPY third_party/ third_party/
RUN --mount=type=cache,target=/go/pkg/mod go mod download
COPY . .
RUN --mount=type=cache,target=/go/pkg/mod --mount=type=cache,target=/root/.cache/go-build \
    set -eu; \
    for cmd in ./kasd/cmd/kasd ./agentd/cmd/agentd ./kasctl; do \
      CGO_ENABLED=0 GOOS=$TARGETOS GOARCH=$TARGETARCH \
        go build -trimpath -ldflags "-s -w -X main.version=${VERSION} -X main.revision=${REVISION}" -o /out/ "$cmd"; \
    done

# Static binaries need no libc; distroless/static has CA certificates (agentd's system roots,
# kasd's GitLab client), tzdata and a non-root user 65532.
FROM gcr.io/distroless/static-debian12:nonroot
ARG VERSION=dev
LABEL org.opencontainers.image.title="qkas" \
      org.opencontainers.image.description="QUIC tunnel: kasd (server), agentd (agent), kasctl" \
      org.opencontainers.image.version="${VERSION}"
COPY --from=build /out/kasd /out/agentd /out/kasctl /usr/local/bin/
# Numeric, so that Kubernetes' runAsNonRoot can check it without /etc/passwd.
USER 65532:65532
# Ports: kasd 8150/udp agents, 8151/tcp API, 8152/udp peers, 8153/tcp observability;
# agentd 8154/tcp observability.
EXPOSE 8150/udp 8151/tcp 8152/udp 8153/tcp 8154/tcp
ENV PATH=/usr/local/bin:/usr/bin:/bin
CMD ["/usr/local/bin/kasd"]
