package main

// meshctl check: is this mesh healthy, one line per check.

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/meshauth/meshauth/api/meshauth/v1"
	"github.com/meshauth/meshauth/internal/careport"
	"github.com/meshauth/meshauth/internal/config"
	"github.com/meshauth/meshauth/internal/identity"
	"github.com/meshauth/meshauth/internal/meshapi"
	"github.com/meshauth/meshauth/internal/meshapi/sidecarapi"
	"github.com/meshauth/meshauth/internal/policy"
	"github.com/meshauth/meshauth/internal/policy/engine"
	"github.com/meshauth/meshauth/internal/registry"
	"github.com/meshauth/meshauth/internal/tlsprofile"
)

// checkFlags are meshctl check's flags.
type checkFlags struct {
	output       string
	reachability bool
	timeout      time.Duration
}

// newCheckCmd builds `meshctl check`.
func newCheckCmd(g *globalFlags) *cobra.Command {
	f := &checkFlags{}
	cmd := &cobra.Command{
		Use:   "check",
		Short: "Check a running mesh: control plane, root, mesh mode, policy conflicts, every workload's certificate",
		Long: `check verifies a running mesh, one line per check with PASS, WARN, FAIL or
SKIP, and exits 1 if any check fails:

  - the control plane answers (CA status over the admin API);
  - every root in the trust bundle is valid (WARN under 30 days left);
  - the mesh mode (authPolicy) and the policies and destination rules, with
    any CONFLICT between a server's mode and its clients' (as tls-check);
  - the config directory: FAIL while a file in it is rejected (empty,
    unparsable or invalid; the last good config stays in force), naming
    the file and the error;
  - self-registrations refused: a sidecar whose labels a Service selects
    but whose identity the Service does not allow (spec.serviceAccounts)
    is not its endpoint (FAIL, with the identity and the reason);
  - every registered workload with a sidecar: the certificate its sidecar
    serves chains to the bundle, is valid now, carries the identity of the
    workload's service account, is not revoked, and how long it has left
    (client-only workloads, with nothing to probe: the newest unrevoked
    certificate for their identity in the CA's issuance log).

With --reachability it also calls every service port from every sidecar
whose outbound proxy it can reach, and compares each result with what
meshctl explain predicts.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return runCheck(cmd, g, f) },
	}
	cmd.Flags().StringVarP(&f.output, "output", "o", "text", "output format: text or json")
	cmd.Flags().BoolVar(&f.reachability, "reachability", false, "probe every sidecar source x service port live and compare with meshctl explain")
	cmd.Flags().DurationVar(&f.timeout, "timeout", 5*time.Second, "limit for each network call")
	return cmd
}

// runCheck runs the checks, prints them and fails if one failed.
func runCheck(cmd *cobra.Command, g *globalFlags, f *checkFlags) error {
	switch f.output {
	case "text", "json":
	default:
		return &exitError{code: 2, err: fmt.Errorf("-o %q: want text or json", f.output)}
	}
	results := runChecks(cmd.Context(), g, f)
	if err := printChecks(cmd.OutOrStdout(), results, f.output); err != nil {
		return err
	}
	var failed []string
	for _, r := range results {
		if r.Status == checkFail {
			failed = append(failed, r.Check)
		}
	}
	if len(failed) > 0 {
		return &exitError{code: 1, err: fmt.Errorf("check: %d failed: %s", len(failed), strings.Join(failed, "; "))}
	}
	return nil
}

// Check outcomes.
const (
	checkPass = "PASS"
	checkWarn = "WARN"
	checkFail = "FAIL"
	checkSkip = "SKIP"
)

// checkResult is one line of meshctl check.
type checkResult struct {
	Check  string `json:"check"`
	Status string `json:"status"`
	Detail string `json:"detail"`
}

// rootWarnWindow is how close to expiry a root gets a WARN.
const rootWarnWindow = 30 * 24 * time.Hour

// checker collects the results of one meshctl check run.
type checker struct {
	out []checkResult
	now time.Time
	tmo time.Duration
}

func (c *checker) add(check, st, format string, args ...any) {
	c.out = append(c.out, checkResult{Check: check, Status: st, Detail: fmt.Sprintf(format, args...)})
}

// runChecks runs every check against the control plane found through g.
func runChecks(ctx context.Context, g *globalFlags, f *checkFlags) []checkResult {
	c := &checker{now: time.Now(), tmo: f.timeout}
	conn, err := g.dialControl(ctx, true, "")
	if err != nil {
		c.add("control plane reachable", checkFail, "%v", err)
		return c.out
	}
	defer conn.Close()
	admin := pb.NewAdminClient(conn)

	// 1. The control plane answers; 2. roots.
	if !c.checkCA(ctx, admin, g.Dir) {
		return c.out
	}
	// The trust bundle (with revocations) for the workload checks.
	bundle := c.trustBundle(ctx, pb.NewCertificateAuthorityClient(conn))

	// 3. Config: mesh mode, policies, destination rules, conflicts.
	state, ok := c.state(ctx, admin)
	if !ok {
		return c.out
	}
	cfg := state.Config
	if cfg == nil {
		cfg = &config.Config{}
	}
	reg := registry.FromState(state.Registry)
	eng := engine.New(cfg, reg)
	c.checkConfig(state, cfg, eng)

	// 4. Workloads.
	connected := map[string]meshapi.SidecarStatus{}
	for _, sc := range state.Sidecars {
		connected[sc.Workload] = sc
	}
	for _, w := range reg.Workloads() {
		c.checkWorkload(ctx, admin, w, cfg, eng, connected, bundle)
	}

	if f.reachability {
		c.out = append(c.out, reachability(ctx, eng, reg, cfg, c.tmo)...)
	}
	return c.out
}

// checkCA checks that the control plane answers and judges each root; false
// stops the run.
func (c *checker) checkCA(ctx context.Context, admin pb.AdminClient, dir string) bool {
	cctx, cancel := context.WithTimeout(ctx, c.tmo)
	t0 := time.Now()
	resp, err := admin.CAStatus(cctx, &pb.CAStatusRequest{})
	cancel()
	if err != nil {
		c.add("control plane reachable", checkFail, "%v (is meshctl up running? --dir %s)", rpcError("CA status", err), dir)
		return false
	}
	st, err := meshapi.StatusFromProto(resp)
	if err != nil {
		c.add("control plane reachable", checkFail, "CA status: %v", err)
		return false
	}
	c.add("control plane reachable", checkPass, "CA answered in %s (%s, trust domain %s, bundle v%d)", time.Since(t0).Round(time.Millisecond), st.Mode, st.TrustDomain, st.BundleVersion)

	for _, r := range st.Roots {
		verdict, detail := checkRoot(r, c.now)
		c.add(fmt.Sprintf("root %s (%s)", short(r.Fingerprint), r.State), verdict, "%s", detail)
	}
	if len(st.Roots) == 0 {
		c.add("roots", checkFail, "the trust bundle has no roots")
	}
	return true
}

// trustBundle fetches the bundle with its revocations; nil (and a FAIL) if
// it cannot.
func (c *checker) trustBundle(ctx context.Context, caClient pb.CertificateAuthorityClient) *identity.Bundle {
	cctx, cancel := context.WithTimeout(ctx, c.tmo)
	tb, err := caClient.GetTrustBundle(cctx, &pb.GetTrustBundleRequest{})
	cancel()
	var bundle *identity.Bundle
	if err == nil {
		bundle, err = sidecarapi.BundleFromProto(tb)
	}
	if err != nil {
		c.add("trust bundle", checkFail, "%v", err)
	}
	return bundle
}

// state fetches the control plane's config, registry and sidecars; false
// (with a FAIL) stops the run.
func (c *checker) state(ctx context.Context, admin pb.AdminClient) (*meshapi.State, bool) {
	cctx, cancel := context.WithTimeout(ctx, c.tmo)
	sresp, err := admin.GetState(cctx, &pb.GetStateRequest{})
	cancel()
	if err != nil {
		if status.Code(err) == codes.Unimplemented {
			c.add("mesh config", checkFail, "this control plane serves no config (GetState unimplemented): %v", err)
		} else {
			c.add("mesh config", checkFail, "%v", rpcError("get state", err))
		}
		return nil, false
	}
	state, err := meshapi.StateFromProto(sresp)
	if err != nil {
		c.add("mesh config", checkFail, "%v", err)
		return nil, false
	}
	return state, true
}

// checkConfig reports the config directory, the mesh mode, refused
// registrations and the tls-check rows.
func (c *checker) checkConfig(state *meshapi.State, cfg *config.Config, eng *engine.Engine) {
	if rej := state.ConfigRejected; rej != nil {
		c.add("config directory", checkFail, "%s is rejected since %s; the last good config (version %d) stays in force until it is fixed: %s",
			rej.Dir, rej.At.Local().Format(time.RFC3339), state.ConfigVersion, strings.Join(rej.Errors, "; "))
	}
	c.add("mesh mode", checkPass, "authPolicy %s (trust domain %s)", cfg.AuthPolicy(), cfg.TrustDomain())
	c.add("policies and destination rules", checkPass, "%d authentication policies, %d destination rules", len(cfg.Policies), len(cfg.DestinationRules))
	// Registration is closed by default: a sidecar that claims a service
	// whose Service does not allow its identity is not its endpoint.
	for _, r := range eng.Refusals() {
		c.add("registration "+r.Workload+" -> "+r.Service, checkFail, "%s is not an endpoint of %s: %s", r.SPIFFEID, r.Service, r.Reason)
	}
	for _, r := range eng.TLSCheck(nil) {
		name := fmt.Sprintf("tls-check %s:%d", r.Host, r.Port)
		if r.Status == "OK" {
			c.add(name, checkPass, "OK: server %s (%s), client %s (%s)", r.Server.Mode, r.Server.DecidedBy, r.Client.Mode, r.Client.DecidedBy)
		} else {
			c.add(name, checkFail, "%s: server %s (%s), client %s (%s): %s", r.Status, r.Server.Mode, r.Server.DecidedBy, r.Client.Mode, r.Client.DecidedBy, r.Problem)
		}
	}
}

// checkWorkload checks one registered workload: its sidecar's push stream
// and the certificate it serves (or, with nothing to probe, the newest one
// in the issuance log).
func (c *checker) checkWorkload(ctx context.Context, admin pb.AdminClient, w *registry.Workload, cfg *config.Config,
	eng *engine.Engine, connected map[string]meshapi.SidecarStatus, bundle *identity.Bundle) {
	name := "workload " + w.Key()
	if !w.Sidecar {
		c.add(name, checkSkip, "no sidecar: no mesh identity to check")
		return
	}
	want, err := identity.New(cfg.TrustDomain(), w.Namespace, w.ServiceAccount)
	if err != nil {
		c.add(name, checkFail, "service account %q: %v", w.ServiceAccount, err)
		return
	}
	// The push stream: is the sidecar connected with the right
	// identity, and did it accept the latest config?
	sc, ok := connected[w.Key()]
	switch {
	case !ok:
		c.add(name+" config", checkFail, "its sidecar is not connected to the control plane (is it running? see its log)")
	case sc.SPIFFEID != want.String():
		c.add(name+" config", checkFail, "connected as %s, but the workload's service account is %s", sc.SPIFFEID, want)
	case sc.Nacked != "" && sc.Nacked == sc.Sent:
		c.add(name+" config", checkFail, "the sidecar refused config %s: %s (it keeps serving %s)", sc.Nacked, sc.NackError, sc.Acked)
	case sc.Acked != sc.Sent:
		c.add(name+" config", checkWarn, "config %s sent, %s acknowledged so far", sc.Sent, sc.Acked)
	default:
		c.add(name+" config", checkPass, "connected as %s, config %s acknowledged", sc.SPIFFEID, sc.Acked)
	}
	addr, port := probeAddr(w)
	if addr != "" && inboundMode(eng, w, port) == policy.ServerDisable {
		c.add(name, checkSkip, "port %d is DISABLE by policy: its sidecar serves no certificate there to probe; %s", port, want)
		return
	}
	if addr == "" {
		st, detail := checkFromLog(ctx, admin, want, c.now, c.tmo)
		c.add(name, st, "%s", detail)
		return
	}
	if bundle == nil {
		c.add(name, checkFail, "no trust bundle to verify against")
		return
	}
	st, detail := checkWorkloadCert(ctx, addr, want, bundle, c.now, c.tmo)
	c.add(name, st, "%s", detail)
}

// checkRoot judges one root of the trust bundle at time now.
func checkRoot(r careport.RootStatus, now time.Time) (status, detail string) {
	left := r.NotAfter.Sub(now)
	switch {
	case now.Before(r.NotBefore):
		return checkFail, fmt.Sprintf("not valid before %s", r.NotBefore.Format(time.RFC3339))
	case left <= 0:
		return checkFail, fmt.Sprintf("expired %s; rotate with meshctl ca rotate-root", r.NotAfter.Format(time.RFC3339))
	case left < rootWarnWindow:
		return checkWarn, fmt.Sprintf("expires %s (%s left, under 30 days); rotate with meshctl ca rotate-root", r.NotAfter.Format("2006-01-02"), fmtLeft(left))
	}
	return checkPass, fmt.Sprintf("%s, valid until %s (%s left)", r.Subject, r.NotAfter.Format("2006-01-02"), fmtLeft(left))
}

// probeAddr is where a workload's sidecar serves inbound TLS: the explicit
// sidecar port of its first port (local mesh), or the port itself
// (transparent capture); port is the workload port it fronts.
func probeAddr(w *registry.Workload) (addr string, port uint32) {
	for _, p := range w.Ports {
		listen := p.SidecarPort
		if listen == 0 {
			listen = p.Number
		}
		if listen != 0 && w.Address != "" {
			return net.JoinHostPort(w.Address, strconv.Itoa(int(listen))), p.Number
		}
	}
	return "", 0
}

// inboundMode is the server mode the control plane gives the workload's
// port, from the same snapshot it pushes to the sidecar.
func inboundMode(eng *engine.Engine, w *registry.Workload, port uint32) policy.ServerMode {
	s := eng.Snapshot(w)
	for _, ip := range s.Inbound {
		if ip.Port == port {
			return ip.Mode
		}
	}
	if s.InboundDefault != "" {
		return s.InboundDefault
	}
	return policy.ServerStrict
}

// checkWorkloadCert opens a TLS connection to a sidecar's inbound port and
// judges the certificate it presents. No client certificate is sent: a
// STRICT server still shows its certificate before refusing us.
func checkWorkloadCert(ctx context.Context, addr string, want identity.ID, b *identity.Bundle, now time.Time, tmo time.Duration) (status, detail string) {
	var chain []*x509.Certificate
	cfg := tlsprofile.New()
	// Verification is done below with identity.VerifyPeer, the mesh's rules
	// (SPIFFE ID, revocation) that crypto/tls's hostname check cannot
	// express, after the handshake so a refused certificate is still shown.
	cfg.InsecureSkipVerify = true
	cfg.VerifyConnection = func(cs tls.ConnectionState) error {
		chain = cs.PeerCertificates
		return nil
	}
	d := &net.Dialer{Timeout: tmo}
	dctx, cancel := context.WithTimeout(ctx, tmo)
	defer cancel()
	conn, err := (&tls.Dialer{NetDialer: d, Config: cfg}).DialContext(dctx, "tcp", addr)
	if conn != nil {
		conn.Close()
	}
	if len(chain) == 0 {
		return checkFail, fmt.Sprintf("no certificate from the sidecar at %s: %v", addr, err)
	}
	leaf := chain[0]
	got, verr := identity.VerifyPeer(b, chain, now, identity.AuthorizeOneOf(want.SPIFFE()))
	var bad *identity.UnauthorizedIDError
	switch {
	case errors.As(verr, &bad):
		return checkFail, fmt.Sprintf("sidecar at %s presents %s, but the workload's service account is %s", addr, bad.ID, want)
	case verr != nil:
		return checkFail, fmt.Sprintf("sidecar at %s: %v (serial %s)", addr, verr, identity.SerialHex(leaf))
	}
	left := leaf.NotAfter.Sub(now)
	life := leaf.NotAfter.Sub(leaf.NotBefore)
	// Rotation happens at about half the lifetime; a certificate with less
	// than a tenth left means the agent is not renewing.
	if life > 0 && left < life/10 {
		return checkWarn, fmt.Sprintf("%s, serial %s, %s left of %s: renewal is overdue (is the CA reachable from the sidecar?)", got, identity.SerialHex(leaf), fmtLeft(left), fmtLeft(life))
	}
	return checkPass, fmt.Sprintf("%s, serial %s, valid, not revoked, %s left", got, identity.SerialHex(leaf), fmtLeft(left))
}

func fmtLeft(d time.Duration) string {
	switch {
	case d >= 48*time.Hour:
		return fmt.Sprintf("%dd", int(d.Hours()/24))
	case d >= time.Hour:
		return fmt.Sprintf("%dh%02dm", int(d.Hours()), int(d.Minutes())%60)
	default:
		return d.Round(time.Second).String()
	}
}

// Workload annotations the local mesh writes so that check can reach a
// sidecar's outbound proxy (a Kubernetes cluster has no equivalent: there
// --reachability needs kubectl exec, which meshctl does not do).
const annotationOutboundProxy = "meshauth.io/outbound-proxy"

// reachability calls every service port from every sidecar source whose
// outbound proxy is known and compares the outcome with explain.
func reachability(ctx context.Context, eng *engine.Engine, reg *registry.Registry, cfg *config.Config, tmo time.Duration) []checkResult {
	var out []checkResult
	proxies := map[string]string{} // namespace/name -> proxy URL
	for _, w := range cfg.Workloads {
		if p := w.Metadata.Annotations[annotationOutboundProxy]; p != "" {
			ns := w.Metadata.Namespace
			if ns == "" {
				ns = "default"
			}
			proxies[ns+"/"+w.Metadata.Name] = p
		}
	}
	for _, src := range reg.Workloads() {
		if !src.Sidecar {
			continue
		}
		proxyURL, ok := proxies[src.Key()]
		if !ok {
			out = append(out, checkResult{Check: "reachability from " + src.Key(), Status: checkSkip,
				Detail: "its outbound proxy address is unknown (annotation " + annotationOutboundProxy + ")"})
			continue
		}
		for _, svc := range reg.Services() {
			for _, p := range svc.Ports {
				name := fmt.Sprintf("reachability %s -> %s.%s:%d", src.Key(), svc.Name, svc.Namespace, p.Number)
				x, err := eng.Explain(src, svc, p.Number, "GET", "/")
				if err != nil {
					out = append(out, checkResult{Check: name, Status: checkFail, Detail: err.Error()})
					continue
				}
				live, detail := probeThroughProxy(ctx, proxyURL, fmt.Sprintf("http://%s.%s:%d/", svc.Name, svc.Namespace, p.Number), tmo)
				pred := "DENY"
				if x.Allow {
					pred = "ALLOW"
				}
				got := "DENY"
				if live {
					got = "ALLOW"
				}
				st := checkPass
				if pred != got {
					st = checkFail
				}
				out = append(out, checkResult{Check: name, Status: st,
					Detail: fmt.Sprintf("explain predicts %s (%s); live call: %s", pred, x.Reason, detail)})
			}
		}
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].Check < out[j].Check })
	return out
}

// probeThroughProxy makes one HTTP request through a sidecar's outbound
// proxy. Any answer from the app counts as reachable; a refusal by either
// sidecar (502/503/403 from the mesh, or a broken connection) does not.
func probeThroughProxy(ctx context.Context, proxyURL, target string, tmo time.Duration) (bool, string) {
	pu, err := url.Parse(proxyURL)
	if err != nil {
		return false, "bad proxy URL " + proxyURL
	}
	c := &http.Client{Timeout: tmo, Transport: &http.Transport{Proxy: http.ProxyURL(pu), DisableKeepAlives: true}}
	req, err := http.NewRequestWithContext(ctx, "GET", target, nil)
	if err != nil {
		return false, err.Error()
	}
	resp, err := c.Do(req)
	if err != nil {
		return false, err.Error()
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	switch resp.StatusCode {
	case http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusForbidden:
		return false, fmt.Sprintf("%s: %s", resp.Status, strings.TrimSpace(string(body)))
	}
	return true, resp.Status
}

func printChecks(w io.Writer, results []checkResult, format string) error {
	if format == "json" {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(results)
	}
	width := 0
	for _, r := range results {
		width = max(width, len(r.Check))
	}
	counts := map[string]int{}
	for _, r := range results {
		counts[r.Status]++
		fmt.Fprintf(w, "%-4s  %-*s  %s\n", r.Status, width, r.Check, r.Detail)
	}
	fmt.Fprintf(w, "\n%d checks: %d passed, %d warnings, %d failed, %d skipped\n", len(results), counts[checkPass], counts[checkWarn], counts[checkFail], counts[checkSkip])
	return nil
}

// checkFromLog judges a client-only workload (no inbound port to probe) by
// the CA's issuance log: the newest unexpired certificate for its identity
// must not be revoked. The log is by identity, so with several instances of
// one service account this says that a good certificate exists for it, not
// which instance holds it.
func checkFromLog(ctx context.Context, admin pb.AdminClient, want identity.ID, now time.Time, tmo time.Duration) (verdict, detail string) {
	cctx, cancel := context.WithTimeout(ctx, tmo)
	defer cancel()
	resp, err := admin.ListIssued(cctx, &pb.ListIssuedRequest{SpiffeId: want.String(), OnlyValid: true})
	if status.Code(err) == codes.Unimplemented {
		return checkSkip, fmt.Sprintf("client-only (no inbound port) and this control plane has no issuance log API: its certificate cannot be checked from here; %s", want)
	}
	if err != nil {
		return checkFail, rpcError("issuance log", err).Error()
	}
	entries := meshapi.IssuedFromProto(resp.Entries)
	for i := len(entries) - 1; i >= 0; i-- { // newest first
		e := entries[i]
		if e.Revoked || now.After(time.Unix(e.NotAfter, 0)) {
			continue
		}
		left := time.Unix(e.NotAfter, 0).Sub(now)
		return checkPass, fmt.Sprintf("client-only (no inbound port to probe); the CA log's newest certificate for %s: serial %s, valid until %s (%s left), requested by %s",
			want, e.Serial, time.Unix(e.NotAfter, 0).UTC().Format(time.RFC3339), fmtLeft(left), e.Requester)
	}
	if len(entries) > 0 {
		return checkFail, fmt.Sprintf("client-only; every unexpired certificate the CA issued for %s is revoked: its sidecar must renew (the agent falls back to its join token)", want)
	}
	return checkFail, fmt.Sprintf("client-only; the CA has issued no unexpired certificate for %s: its sidecar has no valid identity (see its log)", want)
}
