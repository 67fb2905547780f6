package cluster

import (
	"strings"
	"testing"
	"time"

	"github.com/meshauth/meshauth/internal/walkthrough"
	"github.com/meshauth/meshauth/test/cluster/seedreplay"
)

// meshctlAdmin is meshctl with the control plane's state directory (its
// pod's emptyDir on the node: admin token, root) and its Service's address,
// as a node admin runs it.
const meshctlAdmin = "meshctl --dir $KUBELET_ROOT/pods/$(kubectl get pod -n istio-system -l app=meshauth-control -o jsonpath={.items[0].metadata.uid})/volumes/kubernetes.io~empty-dir/state" +
	" --addr $(kubectl get svc meshauth-control -n istio-system -o jsonpath={.spec.clusterIP}):15012"

// TestRootRotation (issue #17): `meshctl ca rotate-root` on the real
// cluster, with httpbin and sleep in Secret mode (their certificates in
// istio.<sa> Secret volumes) and CSR-mode pods from the other tests. The
// new root is in every bundle and does not sign until every sidecar has
// ACKed it — the Secret-mode ones once the kubelet has refreshed their
// volume and the sidecar re-read root-cert.pem, without a restart — then
// signing switches and the controller re-issues every istio.<sa> Secret
// from the new root; sleep calls httpbin before, during and after.
func TestRootRotation(t *testing.T) {
	ctx, p := begin(t, 12*time.Minute)
	p.R.Section("Root rotation the whole fleet acknowledges")
	p.Step(ctx, "namespace", "kubectl create ns rotate", seedreplay.Succeeds)
	p.Deploy(ctx, "rotate",
		"kubectl apply -n rotate -f <(meshctl kube-inject -f samples/httpbin/httpbin.yaml)",
		"kubectl apply -n rotate -f <(meshctl kube-inject -f samples/sleep/sleep.yaml)")
	curl := seedreplay.CurlFrom("sleep", "sleep", "rotate", "httpbin:8000/headers")
	p.Step(ctx, "sleep -> httpbin before the rotation", curl, seedreplay.Curl(walkthrough.SeedOK))
	restarts := "kubectl get pods -n rotate -o jsonpath='{range .items[*]}{.metadata.name} {.status.containerStatuses[*].restartCount}{\"\\n\"}{end}'"
	before := p.Run(ctx, restarts).Stdout

	p.Step(ctx, "rotate-root: the new root in every bundle, not signing", meshctlAdmin+" ca rotate-root", seedreplay.Contains("not signing yet"))
	p.Step(ctx, "rotation status", meshctlAdmin+" ca rotation status", seedreplay.Contains("Phase:"))
	p.Step(ctx, "sleep -> httpbin while the sidecars take the new root", curl, seedreplay.Curl(walkthrough.SeedOK))
	// The kubelet refreshes Secret volumes within its sync period (about
	// a minute); the sidecars ACK then; then signing switches.
	p.Step(ctx, "signing switches once every sidecar ACKed",
		"for i in $(seq 240); do "+meshctlAdmin+" ca rotation status -o json | grep -q '\"phase\":\"reissuing\"' && exit 0; sleep 1; done; "+meshctlAdmin+" ca rotation status; exit 1",
		seedreplay.Succeeds)
	p.Step(ctx, "rotation status after the switch", meshctlAdmin+" ca rotation status", seedreplay.Contains("Phase:      reissuing"))
	// The controller re-issues istio.sleep from the new root (the bundle's
	// roots changed); sleep's sidecar takes the new files without a restart.
	p.Step(ctx, "sleep's sidecar holds a certificate from the new root",
		"for i in $(seq 240); do kubectl exec "+seedreplay.PodOf("sleep", "rotate")+" -c istio-proxy -n rotate -- cat /etc/certs/cert-chain.pem | openssl x509 -noout -issuer | grep -q 'meshauth root 20' && exit 0; sleep 1; done; exit 1",
		seedreplay.Succeeds)
	p.Step(ctx, "sleep -> httpbin after the switch", curl, seedreplay.Curl(walkthrough.SeedOK))
	after := p.Run(ctx, restarts).Stdout
	p.R.Check("no pod restarted during the rotation", before == after, strings.TrimSpace(after), strings.TrimSpace(before))
	p.Step(ctx, "ca status", meshctlAdmin+" ca status", seedreplay.Succeeds)
}
