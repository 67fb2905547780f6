# meshctl, for running the seed's checks from inside a cluster (a Job or
# `kubectl run`). Build from the repository root:
#   docker build -f install/docker/meshctl.Dockerfile -t ghcr.io/meshauth/meshctl:latest .
FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 GOTOOLCHAIN=local go build -trimpath -ldflags=-s -o /out/meshctl ./cmd/meshctl

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/meshctl /meshctl
ENTRYPOINT ["/meshctl"]
