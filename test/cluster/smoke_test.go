package cluster

import (
	"strings"
	"testing"
)

// TestPodRuns is the smoke test: a pod from the locally built sleep image
// is scheduled, started by kubelet through containerd and runc, and
// `kubectl exec` runs Debian's curl in it.
func TestPodRuns(t *testing.T) {
	c := cluster(t)
	if err := c.Apply(`apiVersion: v1
kind: Pod
metadata: {name: smoke, namespace: default}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - {name: sleep, image: ghcr.io/meshauth/sleep:latest, imagePullPolicy: Never}
`); err != nil {
		t.Fatal(err)
	}
	defer c.Kubectl("delete", "pod", "smoke", "--wait=false")
	if out, err := c.Kubectl("wait", "--for=condition=Ready", "pod/smoke", "--timeout=120s"); err != nil {
		t.Fatalf("pod not Ready: %v\n%s", err, out)
	}
	out, err := c.Kubectl("exec", "smoke", "--", "curl", "--version")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(out, "curl ") {
		t.Errorf("curl --version in the pod printed %q", out)
	}
}
