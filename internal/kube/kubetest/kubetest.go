// Package kubetest runs a real Kubernetes control plane for tests: Debian's
// etcd and the kube-apiserver built from tools/kube-apiserver, both on free
// loopback ports, with ServiceAccount token issuing (TokenRequest and
// TokenReview work) and an admin credential.
//
// There is no kubelet, scheduler or controller-manager: Pods stay Pending and
// nothing creates ServiceAccounts or tokens on its own, which is what the
// controller and webhook tests want (they act on API objects, not on
// containers).
//
// Use it from TestMain:
//
//	func TestMain(m *testing.M) { os.Exit(kubetest.Main(m)) }
//
// and in each test that needs the API server:
//
//	env := kubetest.Need(t) // skips (or fails in CI) when etcd/apiserver are missing
//	cs := env.Clientset(t)
package kubetest

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"testing"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/meshauth/meshauth/internal/pki"
)

// Env is a running etcd + kube-apiserver pair.
type Env struct {
	// Host is the API server URL, https://127.0.0.1:<port>.
	Host string
	// CAPEM is the CA that signed the API server's serving certificate.
	CAPEM []byte
	// AdminToken authenticates as a member of system:masters.
	AdminToken string
	// Issuer is the service-account token issuer (--service-account-issuer).
	Issuer string
	// SigningKey is the private key that signs service-account tokens, so a
	// test can mint tokens the API server will judge (expired ones, say).
	SigningKey *rsa.PrivateKey
	// Dir holds the files of this environment (certs, logs, etcd data).
	Dir string

	etcd, apiserver *proc
}

// proc is a started process whose exit is observed by one goroutine.
type proc struct {
	cmd  *exec.Cmd
	done chan struct{}
}

// RequireEnv is the environment variable that turns a missing etcd or
// kube-apiserver from a skip into a failure. The Makefile's test target sets
// it, so CI never silently skips the Kubernetes tests.
const RequireEnv = "MESHAUTH_REQUIRE_KUBE"

var (
	current  *Env
	startErr error
)

// Main starts the environment, runs the tests and stops it. When etcd or the
// API server binary cannot be found, the tests still run and Need skips them
// with the reason.
func Main(m *testing.M) int {
	flag.Parse()
	if testing.Short() {
		startErr = errors.New("-short: not starting etcd and kube-apiserver")
		return m.Run()
	}
	env, err := Start()
	if err != nil {
		startErr = err
		fmt.Fprintln(os.Stderr, "kubetest:", err)
	} else {
		current = env
		defer env.Stop()
	}
	return m.Run()
}

// Need returns the running environment, or skips the test (fails it when
// MESHAUTH_REQUIRE_KUBE=1) if it could not be started.
func Need(t testing.TB) *Env {
	t.Helper()
	if current != nil {
		return current
	}
	if startErr == nil {
		startErr = errors.New("kubetest.Main was not called from TestMain")
	}
	if os.Getenv(RequireEnv) == "1" && !testing.Short() {
		t.Fatalf("kubernetes test environment required (%s=1) but not available: %v", RequireEnv, startErr)
	}
	t.Skipf("skipping: no real kube-apiserver: %v", startErr)
	return nil
}

// RESTConfig returns an admin client configuration that verifies the API
// server's certificate.
func (e *Env) RESTConfig() *rest.Config {
	return &rest.Config{
		Host:            e.Host,
		BearerToken:     e.AdminToken,
		TLSClientConfig: rest.TLSClientConfig{CAData: e.CAPEM},
		QPS:             100,
		Burst:           200,
	}
}

// Clientset returns an admin clientset.
func (e *Env) Clientset(t testing.TB) *kubernetes.Clientset {
	t.Helper()
	cs, err := kubernetes.NewForConfig(e.RESTConfig())
	if err != nil {
		t.Fatalf("clientset: %v", err)
	}
	return cs
}

// Kubeconfig writes a kubeconfig file for the admin user and returns its path.
func (e *Env) Kubeconfig(t testing.TB) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "kubeconfig")
	data := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: test
  cluster:
    server: %s
    certificate-authority-data: %s
users:
- name: admin
  user:
    token: %s
contexts:
- name: test
  context: {cluster: test, user: admin}
current-context: test
`, e.Host, b64(e.CAPEM), e.AdminToken)
	if err := os.WriteFile(p, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// APIServerPath finds the kube-apiserver binary: $KUBE_APISERVER, then
// bin/kube-apiserver at the repository root (what `make kube-apiserver`
// builds), then $PATH.
func APIServerPath() (string, error) {
	if p := os.Getenv("KUBE_APISERVER"); p != "" {
		return p, nil
	}
	if root, err := repoRoot(); err == nil {
		p := filepath.Join(root, "bin", "kube-apiserver")
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	if p, err := exec.LookPath("kube-apiserver"); err == nil {
		return p, nil
	}
	return "", errors.New("kube-apiserver not found: run `make kube-apiserver` (builds bin/kube-apiserver) or set KUBE_APISERVER")
}

func repoRoot() (string, error) {
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		return "", errors.New("no caller")
	}
	// internal/kube/kubetest/kubetest.go -> repository root.
	return filepath.Abs(filepath.Join(filepath.Dir(file), "..", "..", ".."))
}

// Start launches etcd and kube-apiserver and waits until the API server is
// ready. The caller must Stop the returned Env.
func Start() (_ *Env, err error) {
	etcdPath, err := exec.LookPath("etcd")
	if err != nil {
		return nil, errors.New("etcd not found in PATH: install Debian's etcd-server (make deps)")
	}
	apiPath, err := APIServerPath()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "kubetest-")
	if err != nil {
		return nil, err
	}
	e := &Env{Dir: dir, Issuer: "https://kubernetes.default.svc.cluster.local"}
	defer func() {
		if err != nil {
			e.Stop()
		}
	}()

	ports, err := freePorts(3)
	if err != nil {
		return nil, err
	}
	clientURL := "http://127.0.0.1:" + strconv.Itoa(ports[0])
	peerURL := "http://127.0.0.1:" + strconv.Itoa(ports[1])
	e.etcd, err = startLogged(filepath.Join(dir, "etcd.log"), etcdPath,
		"--data-dir", filepath.Join(dir, "etcd"),
		"--listen-client-urls", clientURL, "--advertise-client-urls", clientURL,
		"--listen-peer-urls", peerURL, "--initial-advertise-peer-urls", peerURL,
		"--initial-cluster", "default="+peerURL,
		"--log-level", "warn",
	)
	if err != nil {
		return nil, fmt.Errorf("start etcd: %w", err)
	}

	if err := e.writeCredentials(); err != nil {
		return nil, err
	}
	e.Host = "https://127.0.0.1:" + strconv.Itoa(ports[2])
	e.apiserver, err = startLogged(filepath.Join(dir, "apiserver.log"), apiPath,
		"--etcd-servers", clientURL,
		"--bind-address", "127.0.0.1",
		"--advertise-address", "127.0.0.1",
		"--secure-port", strconv.Itoa(ports[2]),
		"--tls-cert-file", filepath.Join(dir, "serving.crt"),
		"--tls-private-key-file", filepath.Join(dir, "serving.key"),
		"--token-auth-file", filepath.Join(dir, "tokens.csv"),
		"--authorization-mode", "RBAC",
		"--service-account-issuer", e.Issuer,
		"--service-account-key-file", filepath.Join(dir, "sa.pub"),
		"--service-account-signing-key-file", filepath.Join(dir, "sa.key"),
		"--service-cluster-ip-range", "10.96.0.0/16",
		// No controller-manager runs, so the ServiceAccount admission plugin
		// would refuse every Pod ("serviceaccount default not found").
		"--disable-admission-plugins", "ServiceAccount",
		// The default reconciler writes the kubernetes Endpoints and waits for
		// a lease; there is no second apiserver to agree with.
		"--endpoint-reconciler-type", "none",
		"--enable-priority-and-fairness=false",
		"--v", "1",
	)
	if err != nil {
		return nil, fmt.Errorf("start kube-apiserver: %w", err)
	}
	if err := e.waitReady(60 * time.Second); err != nil {
		log, _ := os.ReadFile(filepath.Join(dir, "apiserver.log"))
		return nil, fmt.Errorf("%w\n--- apiserver.log (tail) ---\n%s", err, tail(log, 4000))
	}
	return e, nil
}

// Stop kills both processes and removes the environment's files.
func (e *Env) Stop() {
	for _, p := range []*proc{e.apiserver, e.etcd} {
		if p != nil {
			_ = p.cmd.Process.Kill()
			<-p.done
		}
	}
	if e.Dir != "" && os.Getenv("KUBETEST_KEEP") == "" {
		_ = os.RemoveAll(e.Dir)
	}
}

func (e *Env) waitReady(limit time.Duration) error {
	rt, err := rest.TransportFor(e.RESTConfig())
	if err != nil {
		return err
	}
	hc := &http.Client{Transport: rt, Timeout: 2 * time.Second}
	deadline := time.Now().Add(limit)
	var last error
	for time.Now().Before(deadline) {
		select {
		case <-e.apiserver.done:
			return errors.New("kube-apiserver exited during start-up")
		default:
		}
		resp, err := hc.Get(e.Host + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			last = fmt.Errorf("readyz: %s", resp.Status)
		} else {
			last = err
		}
		time.Sleep(200 * time.Millisecond)
	}
	return fmt.Errorf("kube-apiserver not ready after %s: %v", limit, last)
}

// writeCredentials makes the serving certificate, the static admin token and
// the service-account signing key.
func (e *Env) writeCredentials() error {
	caKey, caCert, err := SelfSignedCA("kubetest-ca")
	if err != nil {
		return err
	}
	certPEM, keyPEM, err := ServingCert(caCert, caKey, "kube-apiserver", net.ParseIP("127.0.0.1"))
	if err != nil {
		return err
	}
	e.CAPEM = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caCert.Raw})
	tok := make([]byte, 16)
	if _, err := rand.Read(tok); err != nil {
		return err
	}
	e.AdminToken = fmt.Sprintf("%x", tok)
	sa, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return err
	}
	e.SigningKey = sa
	pub, err := x509.MarshalPKIXPublicKey(&sa.PublicKey)
	if err != nil {
		return err
	}
	files := map[string][]byte{
		"serving.crt": certPEM,
		"serving.key": keyPEM,
		"tokens.csv":  []byte(e.AdminToken + ",admin,admin,system:masters\n"),
		"sa.key":      pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(sa)}),
		"sa.pub":      pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pub}),
	}
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(e.Dir, name), data, 0o600); err != nil {
			return err
		}
	}
	return nil
}

// SelfSignedCA makes a throwaway ECDSA CA for test servers (the API server,
// webhooks).
func SelfSignedCA(cn string) (crypto.Signer, *x509.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	c, err := pki.SelfSignedCA(key, pki.CA{
		Subject:   pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour),
		NotAfter:  time.Now().Add(24 * time.Hour),
		KeyUsage:  x509.KeyUsageCertSign,
	})
	return key, c, err
}

// ServingCert issues a TLS server certificate for the IPs from ca, returning
// PEM certificate and PEM PKCS#8 key.
func ServingCert(ca *x509.Certificate, caKey crypto.Signer, cn string, ips ...net.IP) (certPEM, keyPEM []byte, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: cn},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		IPAddresses:  ips,
		DNSNames:     []string{"localhost"},
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, key.Public(), caKey)
	if err != nil {
		return nil, nil, err
	}
	k, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: k}), nil
}

// WaitFor polls cond every 50ms until it returns true or the context-free
// limit passes; it fails the test with what on timeout. Used for eventual
// state ("the Secret appears"), never to assert speed.
func WaitFor(t testing.TB, limit time.Duration, what string, cond func() (bool, error)) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	var last error
	for {
		ok, err := cond()
		if ok {
			return
		}
		last = err
		select {
		case <-ctx.Done():
			t.Fatalf("timed out after %s waiting for %s (last error: %v)", limit, what, last)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func startLogged(logPath, name string, args ...string) (*proc, error) {
	f, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	c := exec.Command(name, args...)
	c.Stdout, c.Stderr = f, f
	if err := c.Start(); err != nil {
		f.Close()
		return nil, err
	}
	p := &proc{cmd: c, done: make(chan struct{})}
	go func() { _ = c.Wait(); f.Close(); close(p.done) }()
	return p, nil
}

func freePorts(n int) ([]int, error) {
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	var ports []int
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

func tail(b []byte, n int) string {
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(bytes.TrimSpace(b))
}

func b64(b []byte) string { return base64.StdEncoding.EncodeToString(b) }

// CAPEM encodes a certificate as PEM.
func CAPEM(c *x509.Certificate) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
}
