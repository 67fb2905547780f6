package main

import (
	"bytes"
	"context"
	"flag"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/meshauth/meshauth/internal/control"
)

var updatePolicyCLI = flag.Bool("update-policycli", false, "rewrite testdata/policycli/*.golden")

// runMeshctl runs the CLI in-process, on a fresh command tree, and returns
// stdout, the error text and the exit code.
func runMeshctl(t *testing.T, args ...string) (string, string, int) {
	t.Helper()
	var out bytes.Buffer
	root := newRootCmd()
	root.SetOut(&out)
	root.SetErr(io.Discard)
	root.SetArgs(args)
	err := root.Execute()
	code, msg := 0, ""
	if err != nil {
		code, msg = exitCode(err), err.Error()
	}
	return out.String(), msg, code
}

func TestPolicyCLIGolden(t *testing.T) {
	const matrix = "../../internal/policy/engine/testdata/matrix.yaml"
	const matrixReg = "../../internal/policy/engine/testdata/matrix-registry.yaml"
	const rbac = "testdata/policycli/rbac.yaml"
	tests := []struct {
		name   string
		args   []string
		code   int
		golden string
	}{
		{"validate ok", []string{"validate", "-f", rbac}, 0, "validate-ok.golden"},
		{"validate warns about a target that names nothing", []string{"validate", "-f", "testdata/policycli/typo.yaml"}, 0, "validate-warnings.golden"},
		{"validate errors", []string{"validate", "-f", "../../internal/config/testdata/invalid/enums.yaml"}, 1, "validate-errors.golden"},
		{"tls-check matrix", []string{"tls-check", "-f", matrix, "-f", matrixReg}, 1, "tlscheck-matrix.golden"},
		{"tls-check one service", []string{"tls-check", "d", "-f", matrix, "-f", matrixReg}, 0, "tlscheck-d.golden"},
		{"tls-check conflict", []string{"tls-check", "-f", "testdata/policycli/conflict.yaml"}, 1, "tlscheck-conflict.golden"},
		{"explain allow", []string{"explain", "-f", rbac, "--from", "sleep-1", "--to", "httpbin:8000", "--method", "GET", "--path", "/status/418"}, 0, "explain-allow.golden"},
		{"explain rbac deny", []string{"explain", "-f", rbac, "--from", "sleep-1.default", "--to", "httpbin.default", "--method", "DELETE", "--path", "/headers"}, 1, "explain-deny.golden"},
		{"explain matrix t->d:8080", []string{"explain", "-f", matrix, "-f", matrixReg, "--from", "default/t-1", "--to", "d:8080"}, 1, "explain-matrix.golden"},
		{"explain grpc allow", []string{"explain", "-f", "testdata/policycli/grpc.yaml", "--from", "sleep-1", "--to", "greeter:9090", "--grpc", "helloworld.Greeter/SayHello"}, 0, "explain-grpc-allow.golden"},
		{"explain grpc deny", []string{"explain", "-f", "testdata/policycli/grpc.yaml", "--from", "sleep-1", "--to", "greeter", "--grpc", "/helloworld.Greeter/SayGoodbye"}, 1, "explain-grpc-deny.golden"},
		{"get policies", []string{"get", "policies", "-f", matrix}, 0, "get-policies.golden"},
		{"get destinationrules yaml", []string{"get", "dr", "-f", matrix, "-o", "yaml"}, 0, "get-dr-yaml.golden"},
		{"get workloads", []string{"get", "workloads", "-f", rbac}, 0, "get-workloads.golden"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			out, msg, code := runMeshctl(t, tc.args...)
			if code != tc.code {
				t.Fatalf("exit code %d, want %d (%s)\n%s", code, tc.code, msg, out)
			}
			path := filepath.Join("testdata/policycli", tc.golden)
			if *updatePolicyCLI {
				os.WriteFile(path, []byte(out), 0o644)
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("read golden (run with -update-policycli): %v", err)
			}
			if out != string(want) {
				t.Errorf("output differs from %s\n got:\n%s\nwant:\n%s", path, out, want)
			}
		})
	}
}

// TestPolicyCLIAgainstControlPlane runs apply, get, tls-check and explain
// against a real meshd control plane (in-process, TLS on loopback).
func TestPolicyCLIAgainstControlPlane(t *testing.T) {
	dir := t.TempDir()
	srv, err := control.New(control.Config{Dir: dir, Listen: "127.0.0.1:0", Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx) }()
	defer func() { cancel(); <-done; srv.Plane().Close() }()
	for srv.Addr() == "" {
		time.Sleep(5 * time.Millisecond)
	}

	out, msg, code := runMeshctl(t, "--dir", dir, "apply", "-f", "../../internal/config/testdata/invalid/unknown-fields.yaml")
	if code != 1 || !strings.Contains(out, "unknown-fields.yaml:7:3") {
		t.Fatalf("apply of a bad file: code %d, %s\n%s", code, msg, out)
	}
	out, msg, code = runMeshctl(t, "--dir", dir, "apply", "-f", "testdata/policycli/rbac.yaml")
	if code != 0 || !strings.Contains(out, "ServiceRoleBinding/default/sleep-views-httpbin applied") || !strings.Contains(out, "config version 1") {
		t.Fatalf("apply: code %d, %s\n%s", code, msg, out)
	}
	out, _, code = runMeshctl(t, "--dir", dir, "get", "services")
	if code != 0 || !strings.Contains(out, "httpbin") || !strings.Contains(out, "8000->80") {
		t.Errorf("get services: %d\n%s", code, out)
	}
	out, _, code = runMeshctl(t, "--dir", dir, "tls-check", "httpbin")
	if code != 0 || !strings.Contains(out, "httpbin.default.svc.cluster.local:8000  OK      STRICT  ISTIO_MUTUAL") {
		t.Errorf("tls-check: %d\n%s", code, out)
	}
	out, _, code = runMeshctl(t, "--dir", dir, "explain", "--from", "sleep-1", "--to", "httpbin:8000", "--method", "GET", "--path", "/headers")
	if code != 0 || !strings.HasPrefix(out, "ALLOW") {
		t.Errorf("explain: %d\n%s", code, out)
	}
	// A STRICT Policy with a DISABLE DestinationRule is valid config, so
	// apply takes it; tls-check is what flags it, with exit status 1.
	if _, msg, code := runMeshctl(t, "--dir", dir, "apply", "-f", "testdata/policycli/conflict.yaml"); code != 0 {
		t.Fatalf("apply conflict.yaml: %s", msg)
	}
	out, _, code = runMeshctl(t, "--dir", dir, "tls-check")
	if code != 1 || !strings.Contains(out, "CONFLICT") {
		t.Errorf("tls-check after conflicting config: %d\n%s", code, out)
	}
}
