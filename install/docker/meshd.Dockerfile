# meshd: the control plane image (meshd kube-control; the install manifests'
# Deployment). kube-control is opt-in (-tags kube): a plain meshd build has
# no Kubernetes client code. Pods get the smaller proxy image (proxy.Dockerfile).
# Build from the repository root:
#   docker build -f install/docker/meshd.Dockerfile -t ghcr.io/meshauth/meshd:latest .
FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 GOTOOLCHAIN=local go build -tags kube -trimpath -ldflags=-s -o /out/meshd ./cmd/meshd

# A static binary needs no distribution; nonroot matches the Deployment's
# runAsNonRoot.
FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/meshd /usr/local/bin/meshd
ENTRYPOINT ["/usr/local/bin/meshd"]
