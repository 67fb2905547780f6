package adversarial

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/meshauth/meshauth/api/meshauth/v1"
	"github.com/meshauth/meshauth/internal/careport"
	"github.com/meshauth/meshauth/internal/client"
	"github.com/meshauth/meshauth/internal/control"
	"github.com/meshauth/meshauth/internal/identity"
)

// Issue #17: a root rotation switches signing only once every sidecar has
// ACKed a bundle with the new root. The attacker wants the switch early,
// while a sidecar (httpbin's, stopped here) still verifies with the old
// bundle only, so that httpbin refuses every certificate of the new root.
//
// It holds sleep's certificate and key (a compromised workload) and
// speaks the bundle stream itself: it calls itself "httpbin", ACKs a
// version it was never sent, ACKs a version naming roots that version
// does not hold, ACKs with no certificate at all, and finally ACKs for
// itself, honestly. Each forged ACK must end its stream with the reason;
// none may count for httpbin; signing must not switch until httpbin's
// own sidecar ACKs.
func TestForgedBundleACKs(t *testing.T) {
	m := startMesh(t, meshOptions{})
	rotation := func() *careport.Rotation { return rotationStatus(t, m) }
	find := func(st *careport.Rotation, spiffeID string) *careport.SidecarAck {
		for i := range st.Sidecars {
			if st.Sidecars[i].SPIFFEID == spiffeID {
				return &st.Sidecars[i]
			}
		}
		return nil
	}
	const httpbinID = "spiffe://cluster.local/ns/default/sa/httpbin"
	waitUntil(t, 20*time.Second, "httpbin's sidecar ACKs its first bundle", func() bool {
		s := find(rotation(), httpbinID)
		return s != nil && s.AckedVersion > 0
	})
	if err := m.Httpbin.Proc.Cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	defer m.Httpbin.Proc.Cmd.Process.Signal(syscall.SIGCONT)
	if _, errOut, code := m.Ctl(t, "ca", "rotate-root"); code != 0 {
		t.Fatalf("rotate-root: %s", errOut)
	}

	sleepCert, err := tls.LoadX509KeyPair(m.Sleep.CertsDir+"/cert-chain.pem", m.Sleep.CertsDir+"/key.pem")
	if err != nil {
		t.Fatal(err)
	}
	open := func(withCert bool) (pb.CertificateAuthority_SyncTrustBundleClient, *pb.TrustBundle, error) {
		t.Helper()
		o := client.Options{Dir: m.StateDir}
		if withCert {
			o.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &sleepCert, nil }
		}
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		t.Cleanup(cancel)
		conn, err := client.Dial(ctx, o)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		st, err := pb.NewCertificateAuthorityClient(conn).SyncTrustBundle(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := st.Send(&pb.BundleAck{Instance: "httpbin"}); err != nil {
			return st, nil, err
		}
		b, err := st.Recv()
		return st, b, err
	}
	// forged sends ack and expects the stream to end with reason.
	forged := func(what string, ack *pb.BundleAck, reason string) {
		t.Helper()
		st, b, err := open(true)
		if err != nil {
			t.Fatalf("%s: open: %v", what, err)
		}
		if ack.Version == 0 {
			ack.Version = b.Version
		}
		if err := st.Send(ack); err != nil {
			t.Fatalf("%s: send: %v", what, err)
		}
		for {
			if _, err = st.Recv(); err != nil {
				break
			}
		}
		if status.Code(err) != codes.InvalidArgument || control.ReasonFromError(err) != reason {
			t.Fatalf("%s: stream ended with %v (reason %q), want InvalidArgument %s", what, err, control.ReasonFromError(err), reason)
		}
		m.WaitLog(t, "control", 5*time.Second, "refused bundle ACK", reason)
	}
	_, b, err := open(true)
	if err != nil {
		t.Fatal(err)
	}
	roots := fingerprints(t, b.Roots)
	forged("ACK of a version never sent", &pb.BundleAck{Version: b.Version + 1, RootsSha256: roots}, "ack_unknown_version")
	forged("ACK naming only the old root", &pb.BundleAck{RootsSha256: roots[:1]}, "ack_roots_mismatch")
	forged("ACK naming a root the CA never had", &pb.BundleAck{RootsSha256: []string{strings.Repeat("ab", 32), roots[0]}}, "ack_roots_mismatch")
	if _, _, err := open(false); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("bundle stream without a certificate: %v, want Unauthenticated", err)
	}
	// An honest ACK, for the attacker's own lineage.
	st, b, err := open(true)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Send(&pb.BundleAck{Version: b.Version, RootsSha256: fingerprints(t, b.Roots)}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond) // give a wrongly counted ACK time to switch signing

	r := rotation()
	victim := find(r, httpbinID)
	if r.Phase != careport.PhaseDistributing || victim == nil || !victim.Blocking || victim.HasNewRoot {
		t.Fatalf("after the forged ACKs: phase %s, httpbin %+v", r.Phase, victim)
	}
	for _, s := range r.Sidecars {
		if s.Instance == "httpbin" && s.SPIFFEID != httpbinID && s.Blocking {
			t.Fatalf("the attacker's own stream is waited for as %+v", s)
		}
	}
	// Positive control: httpbin's own sidecar resumes and ACKs; signing
	// switches.
	m.Httpbin.Proc.Cmd.Process.Signal(syscall.SIGCONT)
	waitUntil(t, 60*time.Second, "signing switches once httpbin's sidecar ACKed", func() bool {
		return rotation().Phase == careport.PhaseReissuing
	})
}

func fingerprints(t *testing.T, pemRoots []string) []string {
	t.Helper()
	b, err := client.BundleFromPEM([]byte(strings.Join(pemRoots, "")), "")
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, r := range b.Roots {
		out = append(out, identity.Fingerprint(r))
	}
	return out
}

// TestBundleStreamInstanceFlood: the instance name on the bundle stream is
// the caller's to choose. The attacker holds sleep's certificate and key
// and opens the stream under many names, to fill the CA store (on
// Kubernetes the Secret that also holds the revocations) with sidecar
// records, each of which a root rotation would wait for. One lineage keeps
// at most 8 records: with 8 connected a ninth name is refused; names that
// come and go replace the oldest disconnected record.
func TestBundleStreamInstanceFlood(t *testing.T) {
	m := startMesh(t, meshOptions{})
	sleepCert, err := tls.LoadX509KeyPair(m.Sleep.CertsDir+"/cert-chain.pem", m.Sleep.CertsDir+"/key.pem")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	conn, err := client.Dial(ctx, client.Options{Dir: m.StateDir,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &sleepCert, nil }})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ca := pb.NewCertificateAuthorityClient(conn)
	open := func(name string) (context.CancelFunc, error) {
		sctx, scancel := context.WithCancel(ctx)
		st, err := ca.SyncTrustBundle(sctx)
		if err == nil {
			err = st.Send(&pb.BundleAck{Instance: name})
		}
		if err == nil {
			_, err = st.Recv()
		}
		return scancel, err
	}
	records := func() int {
		n := 0
		for _, s := range rotationStatus(t, m).Sidecars {
			if s.SPIFFEID == "spiffe://cluster.local/ns/default/sa/sleep" {
				n++
			}
		}
		return n
	}
	var held []context.CancelFunc
	refused := 0
	for i := range 30 {
		c, err := open(fmt.Sprintf("forged-%d", i))
		if err != nil {
			c()
			if status.Code(err) != codes.FailedPrecondition || control.ReasonFromError(err) != "too_many_instances" {
				t.Fatalf("stream %d refused with %v, want FailedPrecondition too_many_instances", i, err)
			}
			refused++
			continue
		}
		held = append(held, c)
	}
	if refused == 0 || len(held) > 8 {
		t.Fatalf("30 instance names of one lineage: %d streams held, %d refused; want at most 8 held", len(held), refused)
	}
	m.WaitLog(t, "control", 5*time.Second, "refused bundle stream", "too_many_instances")
	for _, c := range held {
		c()
	}
	waitUntil(t, 20*time.Second, "the held streams end", func() bool {
		_, err := open("forged-probe")
		return err == nil
	})
	for i := range 40 {
		c, err := open(fmt.Sprintf("churn-%d", i))
		if err != nil {
			t.Fatalf("a new name after the others disconnected: %v", err)
		}
		c()
	}
	if n := records(); n > 8 {
		t.Fatalf("sleep's lineage has %d sidecar records in the store after 70 names, want at most 8", n)
	}
}

// rotationStatus is `meshctl ca rotation status -o json` against m.
func rotationStatus(t *testing.T, m *mesh) *careport.Rotation {
	t.Helper()
	out, errOut, code := m.Ctl(t, "ca", "rotation", "status", "-o", "json")
	if code != 0 {
		t.Fatalf("rotation status: %s", errOut)
	}
	var st careport.Rotation
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatal(err)
	}
	return &st
}
