# meshauth — build, test, demo. `make demo` and `make test` are the two
# set-up commands from the README; both install what they need on a fresh
# Debian machine (apt-get runs only when a tool is missing).
SHELL := /bin/bash
GO ?= go
BIN := bin
export GOTOOLCHAIN := local

# Debian packages the tests use: real curl/openssl for the seed's commands,
# iptables/iproute2 for network-namespace pods, etcd for the Kubernetes tests.
TEST_PKGS := curl openssl iptables iproute2 etcd-server ca-certificates
TEST_TOOLS := curl openssl iptables ip etcd
# The test cluster (test/cluster): containerd 1.6 and runc from Debian, the
# CNI plugins, conntrack for kube-proxy.
TEST_PKGS += containerd runc containernetworking-plugins conntrack
TEST_TOOLS += containerd runc conntrack
# The peer proxies and load generator bench/ compares against (its smoke
# test skips any that are missing, with a message).
TEST_PKGS += nginx libnginx-mod-stream haproxy stunnel4 wrk
TEST_TOOLS += nginx haproxy stunnel4 wrk
FORTIO_VERSION := v1.68.2

.PHONY: all build test test-unit demo demo-k8s up deps proto fuzz bench bench-deps bench-smoke bench-revocation chaos clean kube-apiserver kube-node

all: build

# bin/meshd is the plain build (no k8s.io package): meshctl up and meshctl
# demo run it. bin/meshd-sidecar is the sidecar alone, which `meshd sidecar`
# execs when it sits beside meshd, so every local sidecar runs it: static
# (no libc mapped), without gRPC tracing (cmd/meshd-sidecar/main_test.go
# checks this line). bin/meshd-kube adds `meshd kube-control` (-tags kube),
# as the control-plane image builds it.
build:
	$(GO) build -o $(BIN)/ ./cmd/meshd ./cmd/meshctl
	CGO_ENABLED=0 $(GO) build -tags grpcnotrace -trimpath -ldflags=-s -o $(BIN)/ ./cmd/meshd-sidecar
	$(GO) build -tags kube -o $(BIN)/meshd-kube ./cmd/meshd

deps:
	@missing=""; for t in $(TEST_TOOLS); do command -v $$t >/dev/null 2>&1 || missing="$$missing $$t"; done; \
	test -x /usr/lib/cni/bridge || missing="$$missing cni-plugins"; \
	if [ -n "$$missing" ]; then \
	  echo "installing test tools (missing:$$missing)"; \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(TEST_PKGS) >/dev/null; \
	  else sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(TEST_PKGS) >/dev/null; fi; \
	fi

# The real kube-apiserver the Kubernetes tests run against (internal/kube/kubetest),
# built from k8s.io/kubernetes in its own module (tools/kube-apiserver). The
# first build takes about 5-10 minutes on 2 cores; Go's build cache makes later
# ones a relink, and make skips it while bin/kube-apiserver is newer than the module.
kube-apiserver: $(BIN)/kube-apiserver
$(BIN)/kube-apiserver: tools/kube-apiserver/go.mod tools/kube-apiserver/go.sum tools/kube-apiserver/main.go
	cd tools/kube-apiserver && $(GO) build -trimpath -ldflags=-s -o ../../$(BIN)/kube-apiserver .

# The node and control-plane binaries of the test cluster (test/cluster):
# kubelet, kube-proxy, kube-controller-manager, kube-scheduler and kubectl,
# built from the module cache at the apiserver's version (tools/kube-node).
# Cold: several minutes on 2 cores (kubelet is the longest); warm: a relink
# each. Version stamped as upstream's release build does, so that
# `kubectl get nodes` shows v1.34.4.
KUBE_NODE_CMDS := kubelet kube-proxy kube-controller-manager kube-scheduler kubectl
KUBE_VERSION := v1.34.4
KUBE_LDFLAGS := -s -X k8s.io/component-base/version.gitVersion=$(KUBE_VERSION) \
	-X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=34 \
	-X k8s.io/component-base/version.gitTreeState=clean
kube-node: $(addprefix $(BIN)/kube-node/,$(KUBE_NODE_CMDS))
$(BIN)/kube-node/%: tools/kube-node/go.mod tools/kube-node/go.sum
	cd tools/kube-node && $(GO) build -trimpath -ldflags='$(KUBE_LDFLAGS)' -o ../../$@ k8s.io/kubernetes/cmd/$*

# The one test command (README, .ci/run). MESHAUTH_REQUIRE_KUBE=1 makes the
# Kubernetes tests fail, not skip, if etcd or kube-apiserver is missing.
test: deps build kube-apiserver kube-node
	$(GO) vet ./...
	MESHAUTH_REQUIRE_KUBE=1 $(GO) test -count=1 -timeout 25m ./...

test-unit:
	$(GO) test -short ./...

demo: deps build
	./$(BIN)/meshctl demo

# The seed on a real single-node Kubernetes cluster (test/cluster): up in a
# network namespace, every seed command replayed with OBSERVED next to the
# seed's output, down leaving nothing behind. Needs root.
demo-k8s: deps build kube-apiserver kube-node
	$(GO) run ./test/cluster/cmd/demo-k8s

up: build
	./$(BIN)/meshctl up

# Regenerate the gRPC stubs (committed). Needs Debian's protobuf-compiler and
#   go install google.golang.org/protobuf/cmd/protoc-gen-go@v1.36.12
#   go install google.golang.org/grpc/cmd/protoc-gen-go-grpc@v1.6.2
proto:
	PATH=$$PATH:$$($(GO) env GOPATH)/bin protoc --go_out=. --go_opt=paths=source_relative \
	  --go-grpc_out=. --go-grpc_opt=paths=source_relative api/meshauth/v1/meshauth.proto

# Side-by-side benchmarks (about 8 minutes on 2 cores): meshauth's sidecar
# pair against direct, nginx, haproxy and stunnel, raw limits, and CA
# issuance against step-ca. Rewrites the "Sidecar side by side" section of
# BENCHMARKS.md. CI never runs this; it runs bench/'s smoke test.
bench: deps bench-deps
	$(GO) run ./bench -out BENCHMARKS.md

# The harness's CI check: a few seconds of every installed variant.
bench-smoke:
	$(GO) test -count=1 -run TestBenchSmoke ./bench

# The chaos suite, long form (issue #17; docs/reliability.md): network-
# namespace pods under 1,000 req/s while the control plane is SIGKILLed and
# down for 10 minutes, sidecars and an app are killed, packets are lost,
# pods partitioned, the CA's disk filled and its store corrupted; about
# 30 minutes. Needs root. Rewrites the chaos table of docs/reliability.md.
# `make test` runs the short form (TestChaos in test/e2e, about 2 minutes).
chaos: deps build
	MESHAUTH_CHAOS=long MESHAUTH_CHAOS_REPORT=$(CURDIR)/docs/reliability.md \
	  $(GO) test -count=1 -run '^TestChaos$$' -v -timeout 90m ./test/e2e

# Revocation across 100 sidecars (issue #17 item 3): seconds from
# `meshctl ca revoke` to the last sidecar refusing the revoked peer.
bench-revocation: build
	$(GO) test -count=1 -run '^$$' -bench Revocation -benchtime 5x -timeout 30m ./bench/revocation

# Load generator and CA peer for `make bench`: tools, not module dependencies.
bench-deps:
	@gobin=$$($(GO) env GOPATH)/bin; \
	test -x $$gobin/fortio || command -v fortio >/dev/null || $(GO) install fortio.org/fortio@$(FORTIO_VERSION); \
	test -x $$gobin/step-ca || CGO_ENABLED=0 $(GO) install github.com/smallstep/certificates/cmd/step-ca@v0.30.2; \
	test -x $$gobin/step || $(GO) install github.com/smallstep/cli/cmd/step@v0.30.2

clean:
	rm -rf $(BIN)
