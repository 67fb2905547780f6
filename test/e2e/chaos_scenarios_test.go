package e2e

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/meshauth/meshauth/internal/careport"
	"github.com/meshauth/meshauth/internal/netns"
)

// rotationScenarios: the mesh as it runs, then root rotation end to end with
// the workload certificates rotating under it.
func (cm *chaosMesh) rotationScenarios() []scenario {
	return []scenario{
		{name: "steady load (baseline)", run: func() (string, string) {
			time.Sleep(cm.form.baseline)
			return "-", "nothing broken"
		}},
		{name: fmt.Sprintf("staged root rotation end to end (rotate-root --min-overlap 5s) and %d workload certificate rotations (--cert-ttl 1m)", cm.form.rotations), run: cm.rootRotation},
	}
}

// faultScenarios: everything that breaks.
func (cm *chaosMesh) faultScenarios() []scenario {
	p1, p2, p3 := cm.pairs[0], cm.pairs[1], cm.pairs[2]
	return []scenario{
		{name: fmt.Sprintf("control plane SIGKILLed, down %s", cm.form.controlOut), run: cm.controlDown},
		{name: "client sidecar SIGKILLed and restarted (" + p1.client.Name + ")",
			expected: pairDown(p1.name, "its client's sidecar is the client's only way out (iptables capture): nothing answers while it is dead"),
			run:      func() (string, string) { return cm.restartSidecar(p1, p1.client) }},
		{name: "server sidecar SIGKILLed and restarted (" + p2.server.Name + ")",
			expected: pairDown(p2.name, "the server's sidecar is the server's only way in (STRICT mTLS, capture): nothing answers while it is dead"),
			run:      func() (string, string) { return cm.restartSidecar(p2, p2.server) }},
		{name: "app SIGKILLed and restarted (httpbin in " + p3.server.Name + ")",
			expected: pairDown(p3.name, "the app itself is down: its sidecar answers 503/502 until it is back"),
			run:      func() (string, string) { return cm.restartApp(p3) }},
		{name: "packet loss 5% on every pod (iptables statistic)", run: cm.packetLoss},
		{name: "delay 50 ms on every pod (tc netem)", run: cm.delay},
		{name: "partition: every pod cut off from the control plane", run: cm.partitionControl},
		{name: "partition: " + p1.client.Name + " cut off from " + p1.server.Name,
			expected: pairDown(p1.name, "no packet passes between the pair's two pods: no mesh carries a request over a cut link"),
			run:      func() (string, string) { return cm.partitionPair(p1) }},
		{name: "control plane state dir on a full disk (tmpfs)", run: cm.diskFull},
		{name: "control plane store (ca.db) corrupted", run: cm.corruptStore},
	}
}

// renewals is the number of workload certificates in the CA's log that
// were renewals (authenticated with the previous certificate).
func (cm *chaosMesh) renewals() int {
	out, _, code := cm.meshctlQuiet("ca", "issued", "-o", "json")
	if code != 0 {
		cm.t.Fatalf("meshctl ca issued: exit %d", code)
	}
	var es []careport.IssuedEntry
	if err := json.Unmarshal([]byte(out), &es); err != nil {
		cm.t.Fatalf("meshctl ca issued -o json: %v", err)
	}
	n := 0
	for _, e := range es {
		if e.RenewedFrom() != "" && strings.Contains(e.SPIFFEID, "/ns/default/") {
			n++
		}
	}
	return n
}

// rotateRoot starts a staged root rotation through the CLI (docs/ca.md):
// the new root goes into every bundle, signing switches once every
// sidecar has ACKed it (and at least 5 s have passed), and the old root
// leaves once no live certificate chains to it.
func (cm *chaosMesh) rotateRoot() {
	if out, code := cm.meshctl("ca", "rotate-root", "--min-overlap", "5s"); code != 0 {
		cm.t.Fatalf("meshctl ca rotate-root: exit %d: %s", code, out)
	}
}

// caStatus is `meshctl ca status -o json`.
func (cm *chaosMesh) caStatus() careport.Status {
	out, _, code := cm.meshctlQuiet("ca", "status", "-o", "json")
	if code != 0 {
		cm.t.Fatalf("meshctl ca status: exit %d", code)
	}
	var st careport.Status
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		cm.t.Fatalf("meshctl ca status -o json: %v", err)
	}
	return st
}

// rootRotation rotates the root under load and follows it to its end:
// every sidecar holds a certificate from the new root, and the old root
// has left the bundle.
func (cm *chaosMesh) rootRotation() (string, string) {
	old := cm.caStatus().Signing.Fingerprint
	start := time.Now()
	renewedBefore := cm.renewals()
	cm.rotateRoot()
	var newRoot *x509.Certificate
	allNew, err := waitUntil(recoveryBound, func() error {
		st := cm.caStatus()
		if st.Signing.Fingerprint == old {
			return errors.New("the old root still signs")
		}
		if newRoot == nil {
			newRoot = cm.rootByFingerprint(st.Signing.Fingerprint)
		}
		for _, p := range cm.pods() {
			if err := chainsTo(filepath.Join(cm.certs[p.Name], "cert-chain.pem"), newRoot); err != nil {
				return fmt.Errorf("%s: %w", p.Name, err)
			}
		}
		return nil
	})
	if err != nil {
		cm.t.Errorf("chaos: root rotation: not every sidecar has a certificate from the new root: %v", err)
		return "never", ""
	}
	switched := fmt.Sprintf("%.1f", allNew.Sub(start).Seconds())
	// The rotations go on under the load until the count is reached.
	renewed := 0
	if _, err := waitUntil(time.Duration(cm.form.rotations)*10*time.Second+recoveryBound, func() error {
		if renewed = cm.renewals() - renewedBefore; renewed < cm.form.rotations {
			return fmt.Errorf("%d of %d certificate rotations", renewed, cm.form.rotations)
		}
		return nil
	}); err != nil {
		cm.t.Errorf("chaos: certificate rotations: %v", err)
	}
	switched += fmt.Sprintf(" (%d rotations in %ss)", renewed, since(start))
	// The old root leaves the bundle once no live certificate chains to
	// it: every sidecar has renewed from the new root, and the control
	// plane re-issued its own certificate.
	retired, err := waitUntil(recoveryBound+time.Minute, func() error {
		if st := cm.caStatus(); len(st.Roots) != 1 {
			for _, r := range st.Roots {
				if r.Fingerprint == old {
					return fmt.Errorf("%d roots in the bundle; the old one is %s (%s)", len(st.Roots), r.State, cm.lastOnRoot(r.LastIssuedNotAfter))
				}
			}
			return fmt.Errorf("%d roots in the bundle", len(st.Roots))
		}
		return nil
	})
	if err != nil {
		cm.t.Errorf("chaos: root rotation: the old root never left the bundle: %v", err)
		return switched, "old root never retired"
	}
	return switched, fmt.Sprintf("recovery = every sidecar on the new root; the old root left the bundle %.1fs after rotate-root (no live certificate chained to it)", retired.Sub(start).Seconds())
}

// lastOnRoot names the certificates in the CA's log that expire at
// notAfter: what keeps a retiring root in the bundle.
func (cm *chaosMesh) lastOnRoot(notAfter time.Time) string {
	out, _, _ := cm.meshctlQuiet("ca", "issued", "-o", "json")
	var es []careport.IssuedEntry
	_ = json.Unmarshal([]byte(out), &es)
	var who []string
	for _, e := range es {
		if e.NotAfter == notAfter.Unix() {
			who = append(who, fmt.Sprintf("%s (serial %s, requester %s)", e.SPIFFEID, e.Serial, e.Requester))
		}
	}
	return "the last certificate it signed that is still valid is " + strings.Join(who, ", ")
}

// rootByFingerprint finds the root with that SHA-256 (hex, as ca status
// shows a prefix of it) in the control plane's root-cert.pem.
func (cm *chaosMesh) rootByFingerprint(fp string) *x509.Certificate {
	for _, c := range readCerts(cm.t, filepath.Join(cm.stateDir, "root-cert.pem")) {
		if strings.HasPrefix(fmt.Sprintf("%x", sha256.Sum256(c.Raw)), fp) {
			return c
		}
	}
	cm.t.Fatalf("no root with fingerprint %s in root-cert.pem", fp)
	return nil
}

// chainsTo verifies the chain in file against root alone.
func chainsTo(file string, root *x509.Certificate) error {
	b, err := os.ReadFile(file)
	if err != nil {
		return err
	}
	certs, err := parseCerts(b)
	if err != nil || len(certs) == 0 {
		return fmt.Errorf("%s: no certificate (%v)", file, err)
	}
	roots, inter := x509.NewCertPool(), x509.NewCertPool()
	roots.AddCert(root)
	for _, c := range certs[1:] {
		inter.AddCert(c)
	}
	_, err = certs[0].Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
	return err
}

// controlDown SIGKILLs the control plane, keeps it down while the load
// runs, starts it again and measures until every sidecar is connected
// again and no certificate request is left failing.
func (cm *chaosMesh) controlDown() (string, string) {
	cm.killControl()
	time.Sleep(cm.form.controlOut)
	pending := 0
	for _, p := range cm.pods() {
		if a, err := agentOf(p); err == nil && a.LastError != "" {
			pending++
		}
	}
	back := time.Now()
	cm.startControl()
	ok, err := waitUntil(recoveryBound, cm.converged)
	if err != nil {
		cm.t.Errorf("chaos: control plane restart: the mesh never converged: %v", err)
		return "never", ""
	}
	return fmt.Sprintf("%.1f", ok.Sub(back).Seconds()),
		fmt.Sprintf("recovery = from the restart until every sidecar is connected and no certificate request fails; sidecars with a renewal failing when it came back: %d", pending)
}

// restartSidecar SIGKILLs pod's sidecar, waits a second, starts it again
// (it reuses the certificate in its directory) and measures until the
// pair's requests succeed again.
func (cm *chaosMesh) restartSidecar(pair *chaosPair, pod *netns.Pod) (string, string) {
	cmd := cm.sidecars[pod.Name]
	if err := syscall.Kill(cmd.Process.Pid, syscall.SIGKILL); err != nil {
		cm.t.Fatalf("kill sidecar: %v", err)
	}
	cm.c.Stop(cmd, 3*time.Second)
	time.Sleep(time.Second)
	heal := time.Now()
	cm.startSidecar(pod, filepath.Join(cm.dir, "token-"+pod.Name))
	return cm.dataPathRecovery(pair.name, heal), "recovery = from the restart to the pair's traffic flowing again"
}

// restartApp SIGKILLs the pair's httpbin and starts it again.
func (cm *chaosMesh) restartApp(pair *chaosPair) (string, string) {
	if err := syscall.Kill(pair.app.Process.Pid, syscall.SIGKILL); err != nil {
		cm.t.Fatalf("kill app: %v", err)
	}
	cm.c.Stop(pair.app, 3*time.Second)
	time.Sleep(time.Second)
	heal := time.Now()
	pair.app = startApp(cm.t, cm.c, pair.server, "", "httpbin", "--listen", ":80")
	return cm.dataPathRecovery(pair.name, heal), "recovery = from the restart to the pair's traffic flowing again"
}

// inPod runs a command in a pod (iptables, tc) and fails the test on error.
func inPod(cm *chaosMesh, p *netns.Pod, args ...string) error {
	out, err := exec.Command("ip", append([]string{"netns", "exec", p.NetNS}, args...)...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("pod %s: %s: %v: %s", p.Name, strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return nil
}

// withRules adds iptables rules (filter table, as -I arguments without the
// chain) in pods, holds them for d, removes them, and returns when they
// were removed. Removal also runs at test end if the test fails midway.
func (cm *chaosMesh) withRules(d time.Duration, rules map[*netns.Pod][][]string, beforeHeal func()) time.Time {
	var added [][]string // pod netns + delete arguments
	del := func() {
		for _, a := range added {
			_ = exec.Command("ip", a...).Run()
		}
		added = nil
	}
	cm.t.Cleanup(del)
	for p, rs := range rules {
		for _, r := range rs {
			if err := inPod(cm, p, append([]string{"iptables", "-w", "-I"}, r...)...); err != nil {
				del()
				cm.t.Fatal(err)
			}
			added = append(added, append([]string{"netns", "exec", p.NetNS, "iptables", "-w", "-D"}, r...))
		}
	}
	time.Sleep(d)
	if beforeHeal != nil {
		beforeHeal()
	}
	del()
	return time.Now()
}

// packetLoss drops 5% of the packets each pod sends and receives.
func (cm *chaosMesh) packetLoss() (string, string) {
	rules := map[*netns.Pod][][]string{}
	for _, p := range cm.pods() {
		rules[p] = [][]string{
			{"INPUT", "-i", "eth0", "-m", "statistic", "--mode", "random", "--probability", "0.05", "-j", "DROP"},
			{"OUTPUT", "-o", "eth0", "-m", "statistic", "--mode", "random", "--probability", "0.05", "-j", "DROP"},
		}
	}
	cm.withRules(cm.form.faultFor, rules, nil)
	return "-", fmt.Sprintf("%s of 5%% loss each way on every pod's eth0, then healed; TCP retransmits", cm.form.faultFor)
}

// delay adds 50 ms to every packet leaving each pod with tc netem, when
// the kernel has sch_netem; it says so when it does not.
func (cm *chaosMesh) delay() (string, string) {
	var added []*netns.Pod
	del := func() {
		for _, p := range added {
			_ = inPod(cm, p, "tc", "qdisc", "del", "dev", "eth0", "root")
		}
		added = nil
	}
	cm.t.Cleanup(del)
	for _, p := range cm.pods() {
		if err := inPod(cm, p, "tc", "qdisc", "add", "dev", "eth0", "root", "netem", "delay", "50ms"); err != nil {
			del()
			if len(added) == 0 && strings.Contains(err.Error(), "unknown") {
				cm.t.Logf("chaos: SKIP delay: this kernel has no sch_netem (%v)", err)
				return "-", "SKIPPED: `tc qdisc add dev eth0 root netem delay 50ms` fails here: " + lastLine(err.Error()) + " (the kernel has no sch_netem; loss and partitions use iptables)"
			}
			cm.t.Fatal(err)
		}
		added = append(added, p)
	}
	time.Sleep(cm.form.faultFor)
	del()
	return "-", fmt.Sprintf("%s of +50 ms on every pod's eth0 (tc netem), then healed", cm.form.faultFor)
}

func lastLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.LastIndex(s, ": "); i >= 0 {
		return strings.TrimSpace(s[i+2:])
	}
	return s
}

// partitionControl drops everything between the pods and the control plane
// in both directions, then heals, and measures until the sidecars are
// connected again.
func (cm *chaosMesh) partitionControl() (string, string) {
	node := cm.c.NodeIP()
	rules := map[*netns.Pod][][]string{}
	for _, p := range cm.pods() {
		rules[p] = [][]string{{"OUTPUT", "-d", node, "-j", "DROP"}, {"INPUT", "-s", node, "-j", "DROP"}}
	}
	noticed := "the control plane still counted every sidecar connected at the heal (the streams were idle; no keepalive had failed yet)"
	heal := cm.withRules(cm.form.faultFor, rules, func() {
		if err := cm.converged(); err != nil {
			noticed = "at the heal: " + err.Error()
		}
	})
	ok, err := waitUntil(recoveryBound, cm.converged)
	if err != nil {
		cm.t.Errorf("chaos: after the control-plane partition the mesh never converged: %v", err)
		return "never", ""
	}
	return fmt.Sprintf("%.1f", ok.Sub(heal).Seconds()), fmt.Sprintf("%s cut off, then healed; %s; recovery = until every sidecar is connected again", cm.form.faultFor, noticed)
}

// partitionPair drops everything between the pair's two pods.
func (cm *chaosMesh) partitionPair(pair *chaosPair) (string, string) {
	heal := cm.withRules(cm.form.faultFor, map[*netns.Pod][][]string{
		pair.client: {{"OUTPUT", "-d", pair.server.IP, "-j", "DROP"}, {"INPUT", "-s", pair.server.IP, "-j", "DROP"}},
		pair.server: {{"OUTPUT", "-d", pair.client.IP, "-j", "DROP"}, {"INPUT", "-s", pair.client.IP, "-j", "DROP"}},
	}, nil)
	return cm.dataPathRecovery(pair.name, heal), fmt.Sprintf("%s cut, then healed; recovery = from the heal to the pair's traffic flowing again", cm.form.faultFor)
}

// diskFull fills the control plane's tmpfs, checks that the CA hands out
// no certificate it could not record, frees the space and measures until
// issuing works again.
func (cm *chaosMesh) diskFull() (string, string) {
	tok := cm.token("default", "chaos-disk")
	filler := filepath.Join(cm.stateDir, "chaos-filler")
	defer os.Remove(filler)
	if err := fillDisk(filler); err != nil {
		cm.t.Fatal(err)
	}
	// A certificate asked for on a full disk: either refused with a clear
	// error, or issued and in the log (recorded before it was returned).
	out := cm.t.TempDir()
	stdout, stderr, code := cm.meshctlErr("cert", "issue", "--namespace", "default", "--service-account", "chaos-disk", "--token", tok, "--out", out)
	issuedOnFull := code == 0
	var note string
	if issuedOnFull {
		serial := lastWordAfter(stdout, "serial ")
		issued, _ := cm.meshctl("ca", "issued", "--identity", "spiffe://cluster.local/ns/default/sa/chaos-disk")
		if serial == "" || !strings.Contains(issued, serial) {
			cm.t.Errorf("chaos: full disk: a certificate (serial %q) was issued that the CA's log does not show:\n%s", serial, issued)
		}
		note = "on the full disk an issuance still committed (bbolt reused free pages) and is in the log"
	} else {
		if _, err := os.Stat(filepath.Join(out, "cert-chain.pem")); err == nil {
			cm.t.Errorf("chaos: full disk: meshctl cert issue failed but wrote a certificate")
		}
		// The caller is told "internal error; see the control plane's
		// log" (internal causes are not handed to callers); the log must
		// name the file and the cause.
		logged := ""
		for _, l := range strings.Split(cm.controlLog.String(), "\n") {
			if strings.Contains(l, "no space left on device") && strings.Contains(l, filepath.Join(cm.stateDir, "ca.db")) {
				logged = l
			}
		}
		if logged == "" {
			cm.t.Errorf("chaos: full disk: the control plane's log does not say which file is on a full disk (meshctl: %s)", stderr)
		}
		if i := strings.Index(logged, "error="); i >= 0 {
			logged = logged[i:]
		}
		note = "on the full disk: `meshctl cert issue` refused: " + firstLine(stderr) + "; the control plane logged " + strings.TrimSpace(logged)
	}
	_, terr, tcode := cm.meshctlErr("token", "create", "--namespace", "default", "--service-account", "chaos-disk")
	if tcode == 0 {
		note += "; a join token could still be created"
	} else {
		note += "; `meshctl token create` refused: " + firstLine(terr)
	}
	time.Sleep(cm.form.faultFor)
	os.Remove(filler)
	freed := time.Now()
	ok, err := waitUntil(recoveryBound, func() error {
		if _, e, c := cm.meshctlQuiet("token", "create", "--namespace", "default", "--service-account", "chaos-disk"); c != 0 {
			return errors.New(e)
		}
		return cm.converged()
	})
	if err != nil {
		cm.t.Errorf("chaos: after the disk was freed the CA never issued again: %v", err)
		return "never", note
	}
	return fmt.Sprintf("%.1f", ok.Sub(freed).Seconds()), note + "; recovery = from freeing the space until a join token is created and no sidecar's renewal fails"
}

func firstLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		s = s[:i]
	}
	return strings.ReplaceAll(s, "|", "/")
}

func lastWordAfter(s, prefix string) string {
	i := strings.Index(s, prefix)
	if i < 0 {
		return ""
	}
	f := strings.Fields(s[i+len(prefix):])
	if len(f) == 0 {
		return ""
	}
	return f[0]
}

// fillDisk writes path until the file system is full.
func fillDisk(path string) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	for _, size := range []int{1 << 20, 4 << 10, 1} {
		buf := make([]byte, size)
		for {
			if _, err := f.Write(buf); err != nil {
				if errors.Is(err, syscall.ENOSPC) {
					break
				}
				return fmt.Errorf("fill %s: %w", path, err)
			}
		}
	}
	return nil
}

// corruptStore SIGKILLs the control plane, overwrites the store's two meta
// pages, and starts it: it must refuse to start, naming the file. Then the
// operator's recovery: the store from the backup taken at the kill, and a
// start; measured until the mesh has converged again.
func (cm *chaosMesh) corruptStore() (string, string) {
	db := filepath.Join(cm.stateDir, "ca.db")
	cm.killControl()
	good, err := os.ReadFile(db)
	if err != nil {
		cm.t.Fatal(err)
	}
	bad := append([]byte(nil), good...)
	if _, err := rand.Read(bad[:min(len(bad), 8192)]); err != nil {
		cm.t.Fatal(err)
	}
	if err := os.WriteFile(db, bad, 0o600); err != nil {
		cm.t.Fatal(err)
	}
	var out bytes.Buffer
	cmd := cm.startControlCmd(&out)
	exited := make(chan struct{})
	go func() {
		for cm.c.Exited(cmd) == nil {
			time.Sleep(100 * time.Millisecond)
		}
		close(exited)
	}()
	note := ""
	select {
	case <-exited:
		cm.c.Stop(cmd, time.Second)
		msg := lastNonEmpty(out.String())
		if !strings.Contains(msg, "ca.db") {
			cm.t.Errorf("chaos: the control plane refused the corrupted store without naming it: %q", msg)
		}
		if strings.Contains(out.String(), "goroutine ") {
			cm.t.Errorf("chaos: the control plane panicked on the corrupted store instead of an error:\n%s", out.String())
		}
		note = "refused to start: " + strings.ReplaceAll(msg, "|", "/")
	case <-time.After(20 * time.Second):
		cm.control = cmd
		cm.stopControl()
		cm.t.Errorf("chaos: the control plane started on a corrupted store (20 s up); it must refuse")
		note = "STARTED on a corrupted store"
	}
	if err := os.WriteFile(db, good, 0o600); err != nil {
		cm.t.Fatal(err)
	}
	back := time.Now()
	cm.startControl()
	ok, err := waitUntil(recoveryBound, cm.converged)
	if err != nil {
		cm.t.Errorf("chaos: after the store was restored the mesh never converged: %v", err)
		return "never", note
	}
	return fmt.Sprintf("%.1f", ok.Sub(back).Seconds()), note + "; recovery = from restoring the backup and starting until every sidecar is connected"
}

// readCerts parses every certificate in a PEM file.
func readCerts(t interface{ Fatal(...any) }, file string) []*x509.Certificate {
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	cs, err := parseCerts(b)
	if err != nil {
		t.Fatal(err)
	}
	return cs
}

func parseCerts(b []byte) ([]*x509.Certificate, error) {
	var out []*x509.Certificate
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			return out, nil
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return nil, err
		}
		out = append(out, c)
	}
}
