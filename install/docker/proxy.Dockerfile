# proxy: the image kube-inject and the webhook put in every pod, for the
# istio-init (meshd init-net) and istio-proxy (meshd sidecar) containers.
# meshd is built with -tags sidecaronly,grpcnotrace (no Kubernetes client
# code, no control plane: `meshd control` is in the meshd image), and
# beside it meshd-sidecar, the sidecar alone, which `meshd sidecar` execs:
# about 12.7 MB, without cobra, the config loader or the Prometheus client
# (cmd/meshd-sidecar/main_test.go keeps it that way). Every sidecar maps
# it, so its size is most of a sidecar's RSS (BENCHMARKS.md, "Idle sidecar
# memory").
# Build from the repository root:
#   docker build -f install/docker/proxy.Dockerfile -t ghcr.io/meshauth/proxy:latest .
FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 GOTOOLCHAIN=local go build -tags sidecaronly,grpcnotrace -trimpath -ldflags=-s -o /out/meshd ./cmd/meshd
RUN CGO_ENABLED=0 GOTOOLCHAIN=local go build -tags grpcnotrace -trimpath -ldflags=-s -o /out/meshd-sidecar ./cmd/meshd-sidecar

# Debian slim, not distroless: meshd init-net runs iptables-restore (and
# ip6tables-restore) in the pod's network namespace.
FROM debian:bookworm-slim
RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends iptables ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/meshd /out/meshd-sidecar /usr/local/bin/
USER 1337:1337
ENTRYPOINT ["meshd"]
