package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/meshauth/meshauth/internal/agent"
	"github.com/meshauth/meshauth/internal/careport"
	"github.com/meshauth/meshauth/internal/identity"
	"github.com/meshauth/meshauth/internal/localmesh"
)

// TestRootRotationEndToEnd rotates the root of a local mesh of real
// sidecars (`meshd sidecar` processes on loopback) while sleep calls
// httpbin through both sidecars without pause, and counts every failed
// request (there must be none):
//
//   - a third sidecar ("stale") is stopped (SIGSTOP) before the rotation
//     starts, so it cannot ACK: status names it, and signing does not
//     switch;
//   - the control plane is killed (SIGKILL) between steps 1 and 2 and
//     started again on the same state: the rotation is still there, and
//     the stale sidecar, disconnected now, is still waited for;
//   - the stale sidecar is resumed (SIGCONT), reconnects and ACKs: signing
//     switches; workloads renew from the new root at their own pace (a
//     2-minute TTL here), and the old root leaves once no live
//     certificate chains to it.
func TestRootRotationEndToEnd(t *testing.T) {
	needBinaries(t)
	lm, ws := rotationMesh(t, t.TempDir(), []string{"--tick", "1s"}, "stale")
	httpbin, sleep, stale := ws[0], ws[1], ws[2]
	ctl := meshctlIn(t, lm)
	wait := func(what string, timeout time.Duration, cond func(*careport.Rotation) bool) *careport.Rotation {
		t.Helper()
		return waitRotation(t, ctl, what, timeout, cond)
	}
	acked := func(st *careport.Rotation, instance string) *careport.SidecarAck {
		for i := range st.Sidecars {
			if st.Sidecars[i].Instance == instance {
				return &st.Sidecars[i]
			}
		}
		return nil
	}
	wait("all three sidecars on the bundle stream, ACKed", 30*time.Second, func(st *careport.Rotation) bool {
		n := 0
		for _, s := range st.Sidecars {
			if s.Connected && s.AckedVersion > 0 {
				n++
			}
		}
		return n == 3
	})

	traffic := startTraffic(t, sleep.OutboundProxy)

	// Step 1, with stale stopped: it cannot ACK.
	if err := stale.Proc.Cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	out := ctl("ca", "rotate-root")
	t.Logf("$ meshctl ca rotate-root\n%s", out)
	st := wait("httpbin and sleep ACK the new root", 30*time.Second, func(st *careport.Rotation) bool {
		return st.Phase == careport.PhaseDistributing && acked(st, "httpbin").HasNewRoot && acked(st, "sleep").HasNewRoot
	})
	newRoot := st.NewRoot
	if s := acked(st, "stale"); st.Waiting != 1 || !s.Blocking || !strings.Contains(s.Why, "connected since") || !strings.Contains(s.Why, "(without the new root)") {
		t.Fatalf("status does not name the stale sidecar as the one waited for: waiting %d, %+v", st.Waiting, s)
	}
	t.Logf("$ meshctl ca rotation status\n%s", ctl("ca", "rotation", "status"))

	// The control plane dies between the steps, and comes back.
	killAndRestartControl(t, lm)
	st = wait("httpbin and sleep back on the restarted control plane", 60*time.Second, func(st *careport.Rotation) bool {
		return acked(st, "httpbin").Connected && acked(st, "sleep").Connected
	})
	if s := acked(st, "stale"); st.Phase != careport.PhaseDistributing || st.NewRoot != newRoot || !s.Blocking || !strings.Contains(s.Why, "disconnected since") {
		t.Fatalf("after the restart: phase %s, new root %s (want %s), stale %+v", st.Phase, st.NewRoot, newRoot, s)
	}
	if signingRoot(t, ctl) == newRoot {
		t.Fatal("signing switched while the stale sidecar had not ACKed")
	}
	t.Logf("after SIGKILL and restart, $ meshctl ca rotation status\n%s", ctl("ca", "rotation", "status"))

	// Step 2: the stale sidecar comes back and ACKs; signing switches.
	if err := stale.Proc.Cmd.Process.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	st = wait("signing switches once the stale sidecar ACKed", 60*time.Second, func(st *careport.Rotation) bool {
		return st.Phase == careport.PhaseReissuing
	})
	if signingRoot(t, ctl) != newRoot || !acked(st, "stale").HasNewRoot {
		t.Fatalf("after the switch: signing %s, want %s; stale %+v", signingRoot(t, ctl), newRoot, acked(st, "stale"))
	}

	// Step 3: every workload renews from the new root; the old one leaves.
	for _, w := range []*localmesh.Workload{httpbin, sleep, stale} {
		waitIssuer(t, w, newRoot, 3*time.Minute)
	}
	st = wait("the old root leaves the bundle", 3*time.Minute, func(st *careport.Rotation) bool { return st.Phase == careport.PhaseDone })
	if len(st.Forced) != 0 || len(st.Live) != 1 {
		t.Fatalf("rotation done with forced %v, live %+v", st.Forced, st.Live)
	}
	t.Logf("$ meshctl ca rotation status\n%s", ctl("ca", "rotation", "status"))
	sent, failed := traffic()
	t.Logf("traffic sleep -> httpbin through both sidecars during the rotation: %d requests, %d failed", sent, failed)
	if sent == 0 || failed != 0 {
		t.Fatalf("%d of %d requests failed during the rotation", failed, sent)
	}
}

// startTraffic calls httpbin through proxy (sleep's sidecar) every 20ms
// until the returned function is called, which returns the requests sent
// and failed (each failure is logged).
func startTraffic(t *testing.T, proxy string) func() (sent, failed int64) {
	pu, err := url.Parse(proxy)
	if err != nil {
		t.Fatal(err)
	}
	c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{Proxy: http.ProxyURL(pu), DisableKeepAlives: true}}
	var n, bad atomic.Int64
	var wg sync.WaitGroup
	stop := make(chan struct{})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
			n.Add(1)
			resp, err := c.Get("http://httpbin:8000/headers")
			if err == nil {
				resp.Body.Close()
				if resp.StatusCode != 200 {
					err = fmt.Errorf("status %d", resp.StatusCode)
				}
			}
			if err != nil {
				bad.Add(1)
				t.Logf("request %d failed at %s: %v", n.Load(), time.Now().UTC().Format(time.RFC3339Nano), err)
			}
		}
	}()
	var once sync.Once
	done := func() (int64, int64) {
		once.Do(func() { close(stop); wg.Wait() })
		return n.Load(), bad.Load()
	}
	// A test that fails before calling done still stops the traffic before
	// the mesh closes (cleanups run last-registered first), so nothing
	// logs after the test has ended.
	t.Cleanup(func() { done() })
	return done
}

// signingRoot is the SHA-256 of the root that signs now, from ca status.
func signingRoot(t *testing.T, ctl func(...string) string) string {
	t.Helper()
	var st careport.Status
	if err := json.Unmarshal([]byte(ctl("ca", "status", "-o", "json")), &st); err != nil {
		t.Fatal(err)
	}
	for _, r := range st.Roots {
		if r.State == careport.RootSigning {
			return r.Fingerprint
		}
	}
	return ""
}

// waitIssuer waits until w's certificate (its certs directory) is signed
// by the root whose SHA-256 is root (directly, or through the intermediates
// of its chain: the top one is signed by root).
func waitIssuer(t *testing.T, w *localmesh.Workload, root string, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		s, b, err := agent.ReadFiles(w.CertsDir, "cluster.local")
		if err == nil {
			for _, r := range b.Roots {
				if identity.Fingerprint(r) == root && s.Chain[len(s.Chain)-1].CheckSignatureFrom(r) == nil {
					return
				}
			}
		}
		if time.Now().After(deadline) {
			data, _ := os.ReadFile(filepath.Join(w.CertsDir, agent.ChainFile))
			t.Fatalf("%s has no certificate from the new root within %s (%v):\n%s", w.Spec.Name, timeout, err, data)
		}
		time.Sleep(time.Second)
	}
}

// rotationMesh starts a local mesh whose control plane runs with
// controlArgs, httpbin (serving) and sleep, each with a 2-minute
// certificate TTL, plus a plain workload for each name in more; it
// returns once sleep reaches httpbin. On failure the logs' tails are
// printed.
func rotationMesh(t *testing.T, dir string, controlArgs []string, more ...string) (*localmesh.Mesh, []*localmesh.Workload) {
	t.Helper()
	lm, err := localmesh.New(localmesh.Config{
		Dir: dir, Meshd: filepath.Join(bin, "meshd"), Meshctl: filepath.Join(bin, "meshctl"),
		StartTimeout: 30 * time.Second, ControlArgs: controlArgs,
	})
	if err != nil {
		t.Fatal(err)
	}
	names := append([]string{"httpbin", "sleep"}, more...)
	t.Cleanup(func() {
		lm.Close()
		if t.Failed() {
			for _, n := range append([]string{"control"}, names...) {
				t.Logf("--- %s.log (tail)\n%s", n, localmesh.Tail(filepath.Join(lm.LogDir(), n+".log"), 25))
			}
		}
	})
	if err := lm.WriteConfig("mesh.yaml", meshConfig("MUTUAL_TLS")); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := lm.StartControl(ctx); err != nil {
		t.Fatal(err)
	}
	ttl := []string{"--cert-ttl", "2m"}
	var ws []*localmesh.Workload
	for _, n := range names {
		spec := localmesh.WorkloadSpec{Name: n, Namespace: "default", ServiceAccount: n, SidecarArgs: ttl}
		if n == "httpbin" {
			spec.Service, spec.ServicePort = "httpbin", 8000
			spec.App = []string{filepath.Join(bin, "meshctl"), "sample", "httpbin", "--listen", "127.0.0.1:{{port}}"}
		}
		w, err := lm.StartWorkload(ctx, spec)
		if err != nil {
			t.Fatal(err)
		}
		ws = append(ws, w)
	}
	if err := ws[1].WaitOutbound(ctx, "httpbin", "default", 30*time.Second); err != nil {
		t.Fatal(err)
	}
	return lm, ws
}

// meshctlIn runs meshctl against lm's control plane and returns its
// output; a failure fails the test.
func meshctlIn(t *testing.T, lm *localmesh.Mesh) func(args ...string) string {
	return func(args ...string) string {
		t.Helper()
		out, err := exec.Command(lm.Meshctl(), append([]string{"--dir", lm.StateDir}, args...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("meshctl %v: %v\n%s", args, err, out)
		}
		return string(out)
	}
}

func rotationStatus(t *testing.T, ctl func(...string) string) *careport.Rotation {
	t.Helper()
	var st careport.Rotation
	if err := json.Unmarshal([]byte(ctl("ca", "rotation", "status", "-o", "json")), &st); err != nil {
		t.Fatal(err)
	}
	return &st
}

// waitRotation polls `meshctl ca rotation status` until cond holds.
func waitRotation(t *testing.T, ctl func(...string) string, what string, timeout time.Duration, cond func(*careport.Rotation) bool) *careport.Rotation {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		if st := rotationStatus(t, ctl); cond(st) {
			return st
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s; rotation status:\n%s", what, timeout, ctl("ca", "rotation", "status"))
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// killAndRestartControl kills lm's control plane (SIGKILL) and starts it
// again on the same state.
func killAndRestartControl(t *testing.T, lm *localmesh.Mesh) {
	t.Helper()
	cp := lm.Control()
	if err := cp.Cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-cp.Done()
	if err := lm.StartControl(context.Background()); err != nil {
		t.Fatal(err)
	}
}
