#!/usr/bin/env bash
# Idle memory of one sidecar as `meshctl up` / `meshctl demo` run it: a
# control plane (`meshd control`, not measured) with a config directory
# declaring the workload and its Service, a join token from `meshctl token
# create`, and `meshd sidecar` with --control-dir (certificates from the CA,
# policy and bundle on the control plane's push stream), an inbound
# listener, the outbound proxy, the admin endpoint and the Workload API.
# After SETTLE seconds idle it prints the sidecar's VmRSS, RssAnon, RssFile
# (from /proc/PID/status) and its largest mappings (smaps).
#
#   bench/idle-rss.sh [MESHD [SETTLE]]
#
# MESHD is what runs the sidecar (default bin/meshd, what local mode runs:
# `meshd sidecar`, which execs bin/meshd-sidecar when it is beside it), or a
# sidecar-only binary (meshd-sidecar, run without the subcommand); the
# control plane is bin/meshd, meshctl bin/meshctl (override with CONTROL=,
# MESHCTL=). Everything listens on
# 127.0.0.1 and runs in a temporary directory; only the processes this
# script starts are stopped, by PID.
set -euo pipefail
MESHD=$(realpath "${1:-bin/meshd}")
SETTLE=${2:-20}
CONTROL=$(realpath "${CONTROL:-bin/meshd}")
MESHCTL=$(realpath "${MESHCTL:-bin/meshctl}")
D=$(mktemp -d /tmp/idle-rss.XXXXXX)
pids=()
cleanup() {
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
	rm -rf "$D"
}
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
APP=$(port) IN=$(port) OUT=$(port) ADMIN=$(port)
mkdir -p "$D/control" "$D/config" "$D/w/certs"
cat >"$D/config/httpbin.yaml" <<YAML
apiVersion: meshauth.io/v1alpha1
kind: Workload
metadata:
  name: httpbin-1
  namespace: default
  labels:
    app: httpbin
spec:
  serviceAccount: httpbin
  address: 127.0.0.1
  ports:
  - name: http
    number: $APP
    protocol: HTTP
    sidecarPort: $IN
---
apiVersion: meshauth.io/v1alpha1
kind: Service
metadata:
  name: httpbin
  namespace: default
spec:
  selector:
    app: httpbin
  ports:
  - name: http
    number: 8000
    targetPort: $APP
    protocol: HTTP
YAML
"$CONTROL" control --dir "$D/control" --listen 127.0.0.1:0 --metrics-listen "" --config "$D/config" >"$D/control.log" 2>&1 &
pids+=($!)
for _ in $(seq 200); do [ -s "$D/control/control.addr" ] && break; sleep 0.1; done
"$MESHCTL" --dir "$D/control" token create --namespace default --service-account httpbin >"$D/w/join.token" 2>>"$D/control.log"
SUB=()
"$MESHD" --help 2>/dev/null | grep -q '^  sidecar ' && SUB=(sidecar)
"$MESHD" "${SUB[@]}" --control-dir "$D/control" --token-file "$D/w/join.token" \
	--namespace default --service-account httpbin --workload httpbin-1 \
	--certs-dir "$D/w/certs" --workload-api "$D/w/agent.sock" \
	--outbound-listen "127.0.0.1:$OUT" --outbound-uid "$(id -u)" --admin "127.0.0.1:$ADMIN" \
	--inbound "127.0.0.1:$IN=127.0.0.1:$APP" >"$D/sidecar.log" 2>&1 &
SC=$!
pids+=($SC)
for _ in $(seq 200); do curl -fs "http://127.0.0.1:$ADMIN/healthz/ready" >/dev/null && break; sleep 0.1; done
curl -fsS "http://127.0.0.1:$ADMIN/healthz/ready" >/dev/null || { echo "sidecar not ready:"; tail -5 "$D/sidecar.log"; exit 1; }
sleep "$SETTLE"
# The process that serves: `meshd sidecar` may have exec'd another binary.
echo "sidecar pid $SC: $(readlink /proc/$SC/exe) ($(stat -c %s "$(readlink /proc/$SC/exe)") bytes), idle ${SETTLE}s"
grep -E '^(VmRSS|RssAnon|RssFile|RssShmem|VmHWM|Threads):' /proc/$SC/status | tr -s ' \t' ' '
echo "largest mappings (Rss kB, smaps):"
awk '/^[0-9a-f]+-[0-9a-f]+ /{name=$6; if(name=="")name="[anon]"} /^Rss:/{rss[name]+=$2} END{for(n in rss) if(rss[n]>0) printf "  %6d %s\n", rss[n], n}' /proc/$SC/smaps | sort -rn | head -8
echo "Go runtime (admin /metrics):"
curl -fsS "http://127.0.0.1:$ADMIN/metrics" | grep -E '^go_(memstats_(heap_inuse|heap_alloc|stack_inuse|mspan_inuse|gc_sys|other_sys|sys)_bytes|goroutines|gc_gogc_percent) ' | sed 's/^/  /' || echo "  (no Go runtime metrics on /metrics)"
