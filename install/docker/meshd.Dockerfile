# meshd: the control plane (meshd kube-control), the sidecar (meshd sidecar)
# and the init container (meshd init-net) are one static binary in one image.
# Build from the repository root:
#   docker build -f install/docker/meshd.Dockerfile -t ghcr.io/meshauth/meshd:latest .
FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 GOTOOLCHAIN=local go build -trimpath -ldflags=-s -o /out/meshd ./cmd/meshd

# Debian slim, not distroless: meshd init-net runs iptables-restore (and
# ip6tables-restore) in the pod's network namespace.
FROM debian:bookworm-slim
RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends iptables ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/meshd /usr/local/bin/meshd
# The sidecar's uid; the capture rules exclude it so the proxy's own
# connections are not redirected back to itself.
USER 1337:1337
ENTRYPOINT ["meshd"]
