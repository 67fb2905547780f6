//go:build !sidecaronly

package main

import (
	"testing"

	corev1 "k8s.io/api/core/v1"

	"github.com/meshauth/meshauth/internal/kube"
	"github.com/meshauth/meshauth/internal/sidecar/cli"
)

// TestInjectedArgsParse: the command lines kube-inject and the webhook put
// into pods (the sidecar container and the init container) are accepted by
// this meshd's flag parsing, in both modes. An injected flag that meshd does
// not know would crash-loop every injected pod; goldens alone cannot see it.
// The test imports internal/kube; meshd itself (the plain build) does not.
func TestInjectedArgsParse(t *testing.T) {
	for _, mode := range []kube.Mode{kube.SecretMode, kube.CSRMode} {
		t.Run(string(mode), func(t *testing.T) {
			in, err := kube.NewInjector(kube.InjectConfig{Mode: mode})
			if err != nil {
				t.Fatal(err)
			}
			spec := &corev1.PodSpec{ServiceAccountName: "httpbin", Containers: []corev1.Container{{
				Name: "httpbin", Image: "httpbin", Ports: []corev1.ContainerPort{{ContainerPort: 80}},
				ReadinessProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/status/200"}}},
			}}}
			if _, err := in.InjectPod(nil, spec); err != nil {
				t.Fatal(err)
			}
			var checked int
			for _, c := range append(append([]corev1.Container{}, spec.InitContainers...), spec.Containers...) {
				if len(c.Command) == 0 || c.Command[0] != "meshd" {
					continue
				}
				args := append(append([]string{}, c.Command[1:]...), c.Args...)
				cmd, rest, err := root.Find(args)
				if err != nil || cmd == root {
					t.Fatalf("container %s: meshd has no subcommand for %q: %v", c.Name, args, err)
				}
				parse := cmd.ParseFlags
				if cmd.DisableFlagParsing {
					// `meshd sidecar` parses its own flags (and
					// meshd-sidecar the same ones): internal/sidecar/cli.
					if cmd.Name() != "sidecar" {
						t.Fatalf("meshd %s does not parse its flags; this test does not know who does", cmd.Name())
					}
					parse = cli.Parse
				}
				if err := parse(rest); err != nil {
					t.Errorf("container %s: meshd %s rejects the injected flags %q: %v", c.Name, cmd.Name(), rest, err)
				}
				checked++
			}
			if checked != 2 {
				t.Fatalf("checked %d meshd containers, want the sidecar and the init container", checked)
			}
		})
	}
}
