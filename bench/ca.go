package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math/big"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	pb "github.com/meshauth/meshauth/api/meshauth/v1"
	"github.com/meshauth/meshauth/internal/client"
)

// The CA comparison: certificates per second through meshauth's gRPC API
// (a join token per call, and renewal over mTLS), through step-ca's
// POST /1.0/sign with a JWK one-time token, and the raw Go limit of the
// signing work itself, all with the same number of parallel clients, in the
// same run, interleaved.

// caKeys name the issuers in caReport.rates, in table order.
var caRows = []struct{ key, label string }{
	{"meshauth-token", "meshauth CA: gRPC CreateCertificate, join token per call"},
	{"meshauth-mtls", "meshauth CA: gRPC CreateCertificate, renewal over mTLS"},
	{"step-ca", "step-ca v0.30.2: POST /1.0/sign, JWK one-time token per call"},
	{"raw", "raw Go limit: parse + check CSR, sign ECDSA P-256, in process, all cores"},
}

// caReport is the CA issuance comparison.
type caReport struct {
	workers int
	d       time.Duration
	rates   map[string][]float64
	errs    map[string]int64
	// cpuPerCert is the signing process's CPU per certificate, microseconds.
	cpuPerCert map[string][]float64
	notes      []string
}

// issuer issues one certificate per call; setup happens before timing.
type issuer func(ctx context.Context, worker int) error

func runCA(ctx context.Context, cfg *config, dir string) *caReport {
	rep := &caReport{workers: cfg.CAWorkers, d: cfg.CADuration, rates: map[string][]float64{}, errs: map[string]int64{}, cpuPerCert: map[string][]float64{}}
	log := cfg.Log
	issuers := map[string]issuer{}
	// cpuOf reads the CPU seconds of the process that does the signing, so
	// each CA's cost per certificate is known apart from the clients'.
	cpuOf := map[string]func() float64{"raw": selfCPU}

	if meshd, err := cfg.controlBinary(dir); err != nil {
		rep.notes = append(rep.notes, fmt.Sprintf("meshauth CA not measured: %v", err))
	} else {
		stop, ctl, tok, mtls, err := startOurCA(ctx, meshd, filepath.Join(dir, "control"), cfg.CAWorkers)
		if stop != nil {
			defer stop()
		}
		if err != nil {
			rep.notes = append(rep.notes, fmt.Sprintf("meshauth CA not measured: %v", err))
		} else {
			issuers["meshauth-token"], issuers["meshauth-mtls"] = tok, mtls
			cpuOf["meshauth-token"], cpuOf["meshauth-mtls"] = ctl.cpuSeconds, ctl.cpuSeconds
		}
	}
	var sc *stepCA
	stepBin, step := findTool("step-ca"), findTool("step")
	if stepBin == "" || step == "" {
		rep.notes = append(rep.notes, "step-ca not measured: step-ca or step is not installed (make bench-deps)")
	} else {
		s, err := startStepCA(ctx, stepBin, step, filepath.Join(dir, "stepca"))
		if s != nil && s.proc != nil {
			defer s.proc.stop()
		}
		if err != nil {
			rep.notes = append(rep.notes, fmt.Sprintf("step-ca not measured: %v", err))
		} else {
			sc = s
			issuers["step-ca"] = sc.issue
			cpuOf["step-ca"] = sc.proc.cpuSeconds
			rep.notes = append(rep.notes, sc.note)
		}
	}
	raw, err := newRawSigner()
	if err != nil {
		rep.notes = append(rep.notes, fmt.Sprintf("raw limit not measured: %v", err))
	} else {
		issuers["raw"] = raw.issue
	}

	for run := 0; run < cfg.Runs; run++ {
		for _, row := range caRows {
			is := issuers[row.key]
			if is == nil {
				continue
			}
			if err := ctx.Err(); err != nil {
				return rep
			}
			if row.key == "step-ca" {
				// One-time tokens are signed before the clock starts, so the
				// client's signing does not compete with step-ca for CPU; our
				// join token needs no per-call client work either.
				if err := sc.makeTokens(int(4000 * cfg.CADuration.Seconds())); err != nil {
					rep.notes = append(rep.notes, fmt.Sprintf("step-ca tokens: %v", err))
					continue
				}
			}
			workers := cfg.CAWorkers
			if row.key == "raw" {
				workers = runtime.GOMAXPROCS(0)
			}
			cpu0 := cpuOf[row.key]()
			rate, errs, firstErr := measureIssuer(ctx, is, workers, cfg.CADuration)
			if cpu := cpuOf[row.key]() - cpu0; cpu > 0 && rate > 0 {
				// The runs last cfg.CADuration plus the last calls' tail;
				// rate*duration is close enough to the count for a per-cert cost.
				rep.cpuPerCert[row.key] = append(rep.cpuPerCert[row.key], cpu/(rate*cfg.CADuration.Seconds())*1e6)
			}
			rep.rates[row.key] = append(rep.rates[row.key], rate)
			rep.errs[row.key] += errs
			if firstErr != nil {
				rep.notes = append(rep.notes, fmt.Sprintf("%s: %d failed issuances, first: %v", row.key, errs, firstErr))
			}
			log.Info("ca", "issuer", row.key, "certs_per_s", int(rate), "errors", errs)
			settle()
		}
	}
	return rep
}

// measureIssuer runs workers goroutines calling is until d passes and
// returns successful issuances per second.
func measureIssuer(ctx context.Context, is issuer, workers int, d time.Duration) (float64, int64, error) {
	var ok, bad atomic.Int64
	var mu sync.Mutex
	var firstErr error
	ctx, cancel := context.WithTimeout(ctx, d+30*time.Second)
	defer cancel()
	deadline := time.Now().Add(d)
	start := time.Now()
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(deadline) && ctx.Err() == nil {
				if err := is(ctx, w); err != nil {
					if err == errNoTokens {
						return
					}
					bad.Add(1)
					mu.Lock()
					if firstErr == nil {
						firstErr = err
					}
					mu.Unlock()
					continue
				}
				ok.Add(1)
			}
		}()
	}
	wg.Wait()
	return float64(ok.Load()) / time.Since(start).Seconds(), bad.Load(), firstErr
}

var errNoTokens = fmt.Errorf("out of pre-signed tokens")

// csrFor makes a P-256 CSR with the given URI SAN (none if empty).
func csrFor(uri string) ([]byte, *ecdsa.PrivateKey, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	tmpl := &x509.CertificateRequest{}
	if uri != "" {
		u, err := url.Parse(uri)
		if err != nil {
			return nil, nil, err
		}
		tmpl.URIs = []*url.URL{u}
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	return der, key, err
}

// startOurCA starts `meshd control`, creates a join token with enough uses,
// gets one certificate for the mTLS renewal path, and returns both issuers.
func startOurCA(ctx context.Context, meshd, dir string, workers int) (func(), *proc, issuer, issuer, error) {
	p, err := startControlPlane(ctx, meshd, dir)
	if err != nil {
		return nil, nil, nil, nil, err
	}
	stop := func() { p.stop() }
	admin, err := client.Dial(ctx, client.Options{Dir: dir, AdminToken: true})
	if err != nil {
		return stop, nil, nil, nil, err
	}
	defer admin.Close()
	tctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	jt, err := pb.NewAdminClient(admin).CreateJoinToken(tctx, &pb.CreateJoinTokenRequest{
		Namespace: "bench", ServiceAccount: "issuer", TtlSeconds: 3 * 3600, Uses: 100_000_000,
	})
	if err != nil {
		return stop, nil, nil, nil, fmt.Errorf("create join token: %w", err)
	}
	csr, key, err := csrFor("")
	if err != nil {
		return stop, nil, nil, nil, err
	}
	tokConn, err := client.Dial(ctx, client.Options{Dir: dir, Token: jt.Token})
	if err != nil {
		return stop, nil, nil, nil, err
	}
	tokCA := pb.NewCertificateAuthorityClient(tokConn)
	call := func(c pb.CertificateAuthorityClient) issuer {
		return func(ctx context.Context, _ int) error {
			resp, err := c.CreateCertificate(ctx, &pb.CreateCertificateRequest{Csr: csr})
			if err == nil && len(resp.CertChain) == 0 {
				err = fmt.Errorf("empty chain")
			}
			return err
		}
	}
	// One certificate through the token path, then renewal calls present it.
	first, err := tokCA.CreateCertificate(tctx, &pb.CreateCertificateRequest{Csr: csr})
	if err != nil {
		tokConn.Close()
		return stop, nil, nil, nil, fmt.Errorf("first certificate: %w", err)
	}
	var chainPEM []byte
	for _, c := range first.CertChain {
		chainPEM = append(chainPEM, c...)
	}
	keyDER, _ := x509.MarshalPKCS8PrivateKey(key)
	cert, err := tls.X509KeyPair(chainPEM, pemBlock("PRIVATE KEY", keyDER))
	if err != nil {
		tokConn.Close()
		return stop, nil, nil, nil, fmt.Errorf("load issued certificate: %w", err)
	}
	mtlsConn, err := client.Dial(ctx, client.Options{Dir: dir, GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
		return &cert, nil
	}})
	if err != nil {
		tokConn.Close()
		return stop, nil, nil, nil, err
	}
	stopAllCA := func() {
		tokConn.Close()
		mtlsConn.Close()
		p.stop()
	}
	return stopAllCA, p, call(tokCA), call(pb.NewCertificateAuthorityClient(mtlsConn)), nil
}

// stepCA is a running step-ca with a JWK provisioner whose key we hold.
type stepCA struct {
	proc    *proc
	url     string
	client  *http.Client
	key     *ecdsa.PrivateKey
	kid     string
	csrPEM  string
	subject string
	note    string

	mu     sync.Mutex
	tokens []string
}

// startStepCA initialises a standalone step-ca (its default: ECDSA P-256
// root and intermediate, badger database), adds a JWK provisioner with a
// key generated here, and starts it.
func startStepCA(ctx context.Context, bin, stepBin, dir string) (*stepCA, error) {
	os.RemoveAll(dir) // step ca init wants a fresh STEPPATH
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	pw := filepath.Join(dir, "password")
	if err := os.WriteFile(pw, []byte("bench-password"), 0o600); err != nil {
		return nil, err
	}
	steppath := filepath.Join(dir, "step")
	ictx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	initCmd := exec.CommandContext(ictx, stepBin, "ca", "init", "--deployment-type", "standalone", "--name", "bench",
		"--dns", "127.0.0.1", "--address", addr, "--provisioner", "bench", "--password-file", pw, "--provisioner-password-file", pw)
	initCmd.Env = append(os.Environ(), "STEPPATH="+steppath)
	if out, err := initCmd.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("step ca init: %w\n%s", err, out)
	}
	sc := &stepCA{url: "https://" + addr, subject: "spiffe://cluster.local/ns/bench/sa/issuer"}
	sc.key, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	jwk := map[string]string{
		"kty": "EC", "crv": "P-256",
		"x": b64(sc.key.PublicKey.X.FillBytes(make([]byte, 32))),
		"y": b64(sc.key.PublicKey.Y.FillBytes(make([]byte, 32))),
	}
	// RFC 7638 thumbprint: the required members in lexicographic order.
	tp := sha256.Sum256([]byte(fmt.Sprintf(`{"crv":"P-256","kty":"EC","x":"%s","y":"%s"}`, jwk["x"], jwk["y"])))
	sc.kid = b64(tp[:])
	jwk["kid"], jwk["use"], jwk["alg"] = sc.kid, "sig", "ES256"
	caJSON := filepath.Join(steppath, "config", "ca.json")
	var conf map[string]any
	b, err := os.ReadFile(caJSON)
	if err != nil {
		return nil, err
	}
	if err := json.Unmarshal(b, &conf); err != nil {
		return nil, fmt.Errorf("decode %s: %w", caJSON, err)
	}
	auth, _ := conf["authority"].(map[string]any)
	if auth == nil {
		return nil, fmt.Errorf("%s has no authority section", caJSON)
	}
	provs, _ := auth["provisioners"].([]any)
	auth["provisioners"] = append(provs, map[string]any{"type": "JWK", "name": "bench-jwk", "key": jwk})
	if b, err = json.MarshalIndent(conf, "", "  "); err != nil {
		return nil, err
	}
	if err := os.WriteFile(caJSON, b, 0o600); err != nil {
		return nil, err
	}
	rootPEM, err := os.ReadFile(filepath.Join(steppath, "certs", "root_ca.crt"))
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(rootPEM)
	sc.client = &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
		TLSClientConfig:     &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12},
		ForceAttemptHTTP2:   true, // one multiplexed connection, as gRPC uses
		MaxIdleConnsPerHost: 64,
	}}
	csr, _, err := csrFor(sc.subject)
	if err != nil {
		return nil, err
	}
	sc.csrPEM = string(pemBlock("CERTIFICATE REQUEST", csr))
	sc.proc, err = startProc(dir, "step-ca", bin, []string{"--password-file", pw, caJSON}, []string{"STEPPATH=" + steppath})
	if err != nil {
		return nil, err
	}
	if err := waitTCP(ctx, addr, sc.proc); err != nil {
		return sc, err
	}
	// One issuance end to end before timing, so setup errors surface here.
	if err := sc.makeTokens(1); err != nil {
		return sc, err
	}
	if err := sc.issue(ctx, 0); err != nil {
		return sc, fmt.Errorf("first step-ca certificate: %w\n%s", err, sc.proc.tail())
	}
	sc.note = "step-ca: `step ca init --deployment-type standalone` defaults (ECDSA P-256 root and intermediate, badgerv2 database that records every token's jti), plus a JWK provisioner whose ES256 key the harness holds; its one-time tokens are signed before each run starts; HTTP/2 client."
	return sc, nil
}

func b64(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }

// makeTokens replaces the pool with n fresh one-time tokens.
func (sc *stepCA) makeTokens(n int) error {
	now := time.Now().Unix()
	hdr := b64([]byte(fmt.Sprintf(`{"alg":"ES256","kid":%q,"typ":"JWT"}`, sc.kid)))
	toks := make([]string, 0, n)
	for i := 0; i < n; i++ {
		jti := make([]byte, 16)
		rand.Read(jti)
		claims, _ := json.Marshal(map[string]any{
			"iss": "bench-jwk", "sub": sc.subject, "sans": []string{sc.subject},
			"aud": sc.url + "/1.0/sign", "iat": now, "nbf": now - 30, "exp": now + 240, "jti": hex.EncodeToString(jti),
		})
		signing := hdr + "." + b64(claims)
		h := sha256.Sum256([]byte(signing))
		der, err := ecdsa.SignASN1(rand.Reader, sc.key, h[:])
		if err != nil {
			return err
		}
		var sig struct{ R, S *big.Int }
		if _, err := asn1.Unmarshal(der, &sig); err != nil {
			return err
		}
		raw := append(sig.R.FillBytes(make([]byte, 32)), sig.S.FillBytes(make([]byte, 32))...)
		toks = append(toks, signing+"."+b64(raw))
	}
	sc.mu.Lock()
	sc.tokens = toks
	sc.mu.Unlock()
	return nil
}

func (sc *stepCA) issue(ctx context.Context, _ int) error {
	sc.mu.Lock()
	if len(sc.tokens) == 0 {
		sc.mu.Unlock()
		return errNoTokens
	}
	tok := sc.tokens[len(sc.tokens)-1]
	sc.tokens = sc.tokens[:len(sc.tokens)-1]
	sc.mu.Unlock()
	body, _ := json.Marshal(map[string]string{"csr": sc.csrPEM, "ott": tok})
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, sc.url+"/1.0/sign", bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := sc.client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	var out struct {
		Crt string `json:"crt"`
	}
	dec := json.NewDecoder(resp.Body)
	if resp.StatusCode != http.StatusCreated && resp.StatusCode != http.StatusOK {
		var e map[string]any
		dec.Decode(&e)
		return fmt.Errorf("step-ca answered %s: %v", resp.Status, e)
	}
	if err := dec.Decode(&out); err != nil || !strings.Contains(out.Crt, "BEGIN CERTIFICATE") {
		return fmt.Errorf("step-ca answer without a certificate: %v", err)
	}
	return nil
}

// rawSigner is the floor of a CA's work: parse and check a CSR, then sign a
// certificate for it with an ECDSA P-256 CA key.
type rawSigner struct {
	caCert *x509.Certificate
	caKey  *ecdsa.PrivateKey
	csr    []byte
}

func newRawSigner() (*rawSigner, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{SerialNumber: randSerial(), Subject: pkix.Name{CommonName: "raw"}, IsCA: true, BasicConstraintsValid: true,
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, err
	}
	ca, _ := x509.ParseCertificate(der)
	csr, _, err := csrFor("spiffe://cluster.local/ns/bench/sa/issuer")
	return &rawSigner{caCert: ca, caKey: key, csr: csr}, err
}

func (r *rawSigner) issue(context.Context, int) error {
	csr, err := x509.ParseCertificateRequest(r.csr)
	if err != nil {
		return err
	}
	if err := csr.CheckSignature(); err != nil {
		return err
	}
	now := time.Now()
	tmpl := &x509.Certificate{SerialNumber: randSerial(), URIs: csr.URIs, NotBefore: now.Add(-time.Minute), NotAfter: now.Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}}
	_, err = x509.CreateCertificate(rand.Reader, tmpl, r.caCert, csr.PublicKey, r.caKey)
	return err
}

func (c *caReport) markdown(b *strings.Builder) {
	w := func(format string, args ...any) { fmt.Fprintf(b, format, args...) }
	w("### CA issuance against step-ca (same run)\n\n")
	w("Certificates per second with %d parallel clients for %s per run (the raw limit uses one goroutine per core), medians of interleaved runs. Every certificate is ECDSA P-256 for a SPIFFE ID, 24 h. The CPU per certificate is the signing process's own (the CA server from /proc/<pid>/stat; the harness itself for the raw limit), without its clients: it holds when the wall-clock rate is set by whatever else runs on the machine.\n\n", c.workers, c.d)
	w("| issuer | certs/s | x step-ca | x raw Go limit | signing process CPU per cert | certs per CPU-second of it | failed calls |\n|---|--:|--:|--:|--:|--:|--:|\n")
	step, raw := median(c.rates["step-ca"]), median(c.rates["raw"])
	for _, row := range caRows {
		r := median(c.rates[row.key])
		if len(c.rates[row.key]) == 0 {
			continue
		}
		us := median(c.cpuPerCert[row.key])
		w("| %s | %s | %s | %s | %s us | %s | %d |\n", row.label, fmtNum(r, 0), ratio(r, step), ratio(r, raw), fmtNum(us, 0), fmtNum(1e6/us, 0), c.errs[row.key])
	}
	w("\n")
	for _, n := range c.notes {
		if n != "" {
			w("- %s\n", n)
		}
	}
	w("\n")
}
