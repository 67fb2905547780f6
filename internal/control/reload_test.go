package control_test

import (
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	pb "github.com/meshauth/meshauth/api/meshauth/v1"
	"github.com/meshauth/meshauth/internal/client"
	"github.com/meshauth/meshauth/internal/control"
	"github.com/meshauth/meshauth/internal/policy"
	"github.com/meshauth/meshauth/internal/push/pushclient"
)

// gauges returns the control plane's metrics by name (gauges and counters).
func gauges(t *testing.T, e *env) map[string]float64 {
	t.Helper()
	mfs, err := e.srv.Metrics().Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			if g := m.GetGauge(); g != nil {
				got[mf.GetName()] = g.GetValue()
			}
			if c := m.GetCounter(); c != nil {
				got[mf.GetName()] = c.GetValue()
			}
		}
	}
	return got
}

// TestEmptyConfigFileKeepsLastGood: issue 11 finding 6. A running control
// plane whose mesh.yaml (MUTUAL_TLS) is truncated, as an editor does before
// it writes, used to apply the empty file: every sidecar was pushed DISABLE
// and plaintext was accepted. Now an empty file (0 bytes, or only comments
// and empty documents) is rejected like any bad file: the sidecar keeps
// the MUTUAL_TLS snapshot, the error names the file (log, GetState,
// metrics), and the complete file is picked up when it is written.
// Deleting the file is how config is removed. Real files, a real control
// plane, a real Discovery stream over mTLS. (Failed on the old code: the
// sidecar's snapshot went to DISABLE after the truncation.)
func TestEmptyConfigFileKeepsLastGood(t *testing.T) {
	dir := t.TempDir()
	mesh := filepath.Join(dir, "mesh.yaml")
	if err := os.WriteFile(mesh, []byte(planeMesh), 0o644); err != nil {
		t.Fatal(err)
	}
	logs := &syncBuffer{}
	e := startPlane(t, dir, logs)
	plane := e.srv.Plane()

	cert, _ := e.issueTLS(t, "default", "sleep")
	c := pushclient.NewClient(pushclient.ClientConfig{Conn: e.dial(t, client.Options{GetClientCertificate: withCert(cert)}), MinBackoff: 10 * time.Millisecond,
		Log: slog.New(slog.NewTextHandler(io.Discard, nil)), Register: func() *pb.Register { return &pb.Register{Workload: "sleep-1"} }})
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { c.Run(ctx); close(done) }()
	defer func() { stop(); <-done }()
	mode := func() policy.ClientTLSMode {
		u := c.Current()
		if u == nil || len(u.Snapshot.Outbound) == 0 {
			return ""
		}
		return u.Snapshot.Outbound[0].Ports[0].TLSMode
	}
	waitUntil(t, "MUTUAL_TLS snapshot", func() bool { return mode() == policy.ClientIstioMutual })
	goodVersion := plane.Config().Version

	for i, bad := range []string{"", "\n  \n", "# mesh.yaml, being rewritten\n---\n---\n", "~\n"} {
		if err := os.WriteFile(mesh, []byte(bad), 0o644); err != nil { // O_TRUNC: the editor's truncate
			t.Fatal(err)
		}
		// Until the control plane has acted on the file: rejected it, or
		// (the old bug) applied it.
		waitUntil(t, "the emptied file handled", func() bool {
			st := getState(t, e)
			return st.ConfigRejected != nil || st.ConfigVersion != goodVersion
		})
		if v, ap := plane.Config().Version, plane.Config().AuthPolicy(); v != goodVersion || ap != "MUTUAL_TLS" {
			t.Fatalf("case %d (%q): config in force is version %d authPolicy %s; want the last good (%d, MUTUAL_TLS)", i, bad, v, ap, goodVersion)
		}
		if st := getState(t, e); len(st.ConfigRejected.Errors) != 1 || !strings.HasPrefix(st.ConfigRejected.Errors[0], mesh+":1:1: no config object in the file") {
			t.Errorf("case %d: GetState's rejection = %+v", i, st.ConfigRejected)
		}
		if got := gauges(t, e); got["meshauth_config_dir_rejected"] != 1 || got["meshauth_config_rejected_total"] < float64(i+1) {
			t.Errorf("case %d: metrics dir_rejected=%v rejected_total=%v", i, got["meshauth_config_dir_rejected"], got["meshauth_config_rejected_total"])
		}
		if err := plane.Push().WaitSynced(ctx, 1); err != nil {
			t.Fatal(err)
		}
		if m := mode(); m != policy.ClientIstioMutual {
			t.Fatalf("case %d (%q): the sidecar was pushed client mode %s after mesh.yaml was emptied; want ISTIO_MUTUAL", i, bad, m)
		}
		// Restore the good file between cases, so each case is a fresh
		// truncation of a good file.
		if err := os.WriteFile(mesh, []byte(planeMesh), 0o644); err != nil {
			t.Fatal(err)
		}
		waitUntil(t, "good file back in force", func() bool { return getState(t, e).ConfigRejected == nil })
		goodVersion = plane.Config().Version
	}
	logged := false
	for _, l := range strings.Split(logs.String(), "\n") {
		logged = logged || strings.Contains(l, `level=ERROR msg="config rejected; the last good config stays in force"`) &&
			strings.Contains(l, " at="+mesh+":1:1 ") && strings.Contains(l, "no config object in the file")
	}
	if !logged {
		t.Errorf("no error log line naming %s:1:1:\n%s", mesh, logs.String())
	}

	// The editor's truncate-then-write: empty first, then the complete
	// (changed) file. The last good stays, then the new file applies.
	if err := os.WriteFile(mesh, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "empty file rejected", func() bool { return getState(t, e).ConfigRejected != nil })
	v := plane.Config().Version
	if err := os.WriteFile(mesh, []byte(planeMesh+"---\napiVersion: meshauth.io/v1alpha1\nkind: Service\nmetadata: {name: ratings}\nspec: {ports: [{number: 9080}]}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "complete file applied", func() bool { st := getState(t, e); return st.ConfigRejected == nil && st.ConfigVersion > v })
	if got := gauges(t, e)["meshauth_config_dir_rejected"]; got != 0 {
		t.Errorf("meshauth_config_dir_rejected = %v after a good file", got)
	}
	if st := getState(t, e); len(st.Registry.Services) != 2 || st.Config.AuthPolicy() != "MUTUAL_TLS" {
		t.Errorf("after the complete write: %d services, authPolicy %s", len(st.Registry.Services), st.Config.AuthPolicy())
	}

	// Deleting the file removes its config: that is the way to say it.
	if err := os.Remove(mesh); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "deletion applied", func() bool {
		return plane.Config().AuthPolicy() == "NONE" && len(getState(t, e).Registry.Services) == 0
	})
}

// TestEmptyConfigFileRefusedAtStart: the start-up path refuses an empty
// file with the same error, naming the file.
func TestEmptyConfigFileRefusedAtStart(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "mesh.yaml"), []byte("# emptied\n"), 0o644)
	_, err := control.New(control.Config{Dir: t.TempDir(), Listen: "127.0.0.1:0", Log: slog.New(slog.NewTextHandler(io.Discard, nil)),
		Plane: control.PlaneConfig{ConfigDir: dir}})
	if err == nil || !strings.Contains(err.Error(), filepath.Join(dir, "mesh.yaml")+":1:1: no config object in the file") {
		t.Fatalf("New with an empty config file: %v", err)
	}
}
