package kube

import (
	"context"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"

	"github.com/meshauth/meshauth/internal/ca"
	"github.com/meshauth/meshauth/internal/control"
	"github.com/meshauth/meshauth/internal/tlsprofile"
)

// ControlConfig configures the control plane in Kubernetes mode (meshd
// kube-control). Zero values get the defaults named.
type ControlConfig struct {
	// REST is how to reach the API server (in-cluster config by default).
	REST *rest.Config
	// Namespace is the control plane's own namespace, where the root
	// (istio-ca-secret or cacerts) and the mesh ConfigMap live
	// (default $POD_NAMESPACE, then istio-system).
	Namespace string
	// Dir is the state directory (CA store, admin token, control.addr).
	// Default /var/lib/meshauth.
	Dir string
	// Listen is the gRPC/TLS address (default :15012).
	Listen        string
	MetricsListen string
	TrustDomain   string
	// SecretMode writes the istio.<sa> Secrets (default on; turn off when
	// every sidecar uses CSR mode, so no private key is kept in etcd).
	DisableSecrets bool
	// Namespaces limits the secret controller (empty: all).
	Namespaces []string
	// CertTTL of Secret-mode certificates (default 90 days).
	CertTTL time.Duration
	// WebhookListen serves the injection webhook over TLS (default :15017;
	// "-" turns it off).
	WebhookListen string
	// WebhookConfig is the MutatingWebhookConfiguration whose caBundle the
	// control plane sets to its webhook certificate's CA.
	WebhookConfig string
	// WebhookHosts are the names and IPs of the webhook's certificate
	// (default meshauth-control.<namespace>.svc and 127.0.0.1).
	WebhookHosts []string
	// Inject configures what the webhook injects.
	Inject InjectConfig
	// Identity names this replica in the leader election (default
	// $POD_NAME, then the host name).
	Identity string
	// LeaseDuration of the leader lease (default 15s); RenewDeadline and
	// RetryPeriod follow client-go's ratios (2/3 and 1/7.5 of it).
	LeaseDuration time.Duration
	// Ready, if set, is called once everything is started (tests).
	Ready func(*control.Server)
	// Leading, if set, is called when this replica becomes the leader (tests).
	Leading func()
	Log     *slog.Logger
}

// RunControl runs the control plane against a cluster until ctx is done:
// the CA (root from cacerts or istio-ca-secret; ServiceAccount tokens
// accepted through TokenReview), the secret controller, the registry from
// Services/EndpointSlices/Pods, the config from the CRDs and the mesh
// ConfigMap, and the injection webhook.
func RunControl(ctx context.Context, cfg ControlConfig) error {
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	if cfg.REST == nil {
		rc, err := rest.InClusterConfig()
		if err != nil {
			return fmt.Errorf("kube: not in a cluster and no kubeconfig given (--kubeconfig): %w", err)
		}
		cfg.REST = rc
	}
	if cfg.Namespace == "" {
		cfg.Namespace = os.Getenv("POD_NAMESPACE")
	}
	if cfg.Namespace == "" {
		cfg.Namespace = "istio-system"
	}
	if cfg.Dir == "" {
		cfg.Dir = "/var/lib/meshauth"
	}
	if cfg.Listen == "" {
		cfg.Listen = ":15012"
	}
	if cfg.WebhookListen == "" {
		cfg.WebhookListen = ":15017"
	}
	if cfg.WebhookConfig == "" {
		cfg.WebhookConfig = "meshauth-sidecar-injector"
	}
	if len(cfg.WebhookHosts) == 0 {
		cfg.WebhookHosts = []string{"meshauth-control." + cfg.Namespace + ".svc", "127.0.0.1"}
	}
	if cfg.Inject.TrustDomain == "" {
		cfg.Inject.TrustDomain = cfg.TrustDomain
	}
	log := cfg.Log.With("component", "kube-control")
	cs, err := kubernetes.NewForConfig(cfg.REST)
	if err != nil {
		return err
	}
	dyn, err := dynamic.NewForConfig(cfg.REST)
	if err != nil {
		return err
	}

	backend, src, err := NewCABackend(ctx, cs, cfg.Namespace, cfg.TrustDomain, time.Now(), cfg.Log)
	if err != nil {
		return err
	}
	log.Info("CA root loaded", "source", string(src), "namespace", cfg.Namespace)
	reviewer, err := NewTokenReviewAuthenticator(TokenReviewConfig{Client: cs, TrustDomain: cfg.TrustDomain, Log: cfg.Log})
	if err != nil {
		return err
	}
	// The config CRDs and the mesh ConfigMap reach the config plane
	// through this source, directly (no file, no polling).
	cfgSrc, err := NewConfigSource(ConfigSourceConfig{Client: cs, Dynamic: dyn, MeshNamespace: cfg.Namespace, Log: cfg.Log})
	if err != nil {
		return err
	}
	// Revocations and the bundle version are in a Secret every replica
	// shares (read before anything is served); the issuance log and join
	// tokens in this replica's own ca.db.
	store, err := OpenCAStore(ctx, cs, cfg.Namespace, cfg.Dir, cfg.Log)
	if err != nil {
		return err
	}
	srv, err := control.New(control.Config{
		Dir: cfg.Dir, Listen: cfg.Listen, MetricsListen: cfg.MetricsListen,
		CA: ca.Config{TrustDomain: cfg.TrustDomain, Backend: backend, Store: store,
			LogRetention: 365 * 24 * time.Hour},
		Authenticators: []ca.Authenticator{reviewer},
		Plane:          control.PlaneConfig{Source: cfgSrc},
		Log:            cfg.Log,
	})
	if err != nil {
		return err
	}
	plane := srv.Plane()
	defer plane.Close()

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	errc := make(chan error, 8)
	run := func(name string, f func(context.Context) error) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := f(ctx); err != nil && ctx.Err() == nil {
				errc <- fmt.Errorf("%s: %w", name, err)
			}
		}()
	}
	run("control", srv.Serve)
	// A revocation on another replica reaches this one's bundle.
	run("CA store", func(ctx context.Context) error { return store.Run(ctx, srv.CA().Refresh) })
	switch b := backend.(type) {
	case *SecretRoots:
		// A root rotated on another replica reaches this one's bundle; a
		// root about to expire is re-issued from its key.
		run("CA roots", func(ctx context.Context) error { return b.Watch(ctx, srv.CA().Refresh, log) })
		run("CA root renewal", func(ctx context.Context) error { return b.RenewLoop(ctx, time.Hour, log) })
	case *PluggedSecret:
		// The operator's new cacerts signs without a restart.
		run("cacerts", func(ctx context.Context) error { return b.Watch(ctx, srv.CA().Refresh, log) })
		// A staged rotation (cacerts-next) made on another replica.
		run("cacerts-next", func(ctx context.Context) error { return b.WatchNext(ctx, srv.CA().Refresh, log) })
	}
	// Every replica serves CSRs, the webhook and its sidecars' config; only
	// the leader writes Secrets and ConfigMaps, so replicas never fight
	// over them. The lease is in the control plane's namespace.
	var leaderWork []func(context.Context) error
	if !cfg.DisableSecrets {
		sc, err := NewSecretController(SecretControllerConfig{Client: cs, CA: srv.CA(), Namespaces: cfg.Namespaces, CertTTL: cfg.CertTTL, Log: cfg.Log})
		if err != nil {
			return err
		}
		leaderWork = append(leaderWork, sc.Run)
	}
	leaderWork = append(leaderWork, func(ctx context.Context) error { return PublishRoot(ctx, cs, srv.CA(), cfg.Log) })
	run("leader election", func(ctx context.Context) error { return lead(ctx, cs, cfg, leaderWork) })
	regSrc, err := NewRegistrySource(RegistrySourceConfig{Client: cs, Registry: plane.Registry(), TrustDomain: srv.CA().TrustDomain(), Log: cfg.Log})
	if err != nil {
		return err
	}
	run("registry source", regSrc.Run)
	// A root rotation does not wait for a sidecar whose pod was deleted.
	srv.CA().SetSidecarGone(regSrc.PodGone)
	if cfg.WebhookListen != "-" {
		in, err := NewInjector(cfg.Inject)
		if err != nil {
			return err
		}
		ws, err := startWebhookServer(ctx, cs, cfg, &Webhook{Injector: in, Log: cfg.Log})
		if err != nil {
			return err
		}
		defer ws.Close()
	}
	if cfg.Ready != nil {
		cfg.Ready(srv)
	}
	select {
	case <-ctx.Done():
		err = nil
	case err = <-errc:
	}
	cancel()
	wg.Wait()
	return err
}

// LeaseName is the Lease the control plane replicas elect a leader with.
const LeaseName = "meshauth-control"

// lead runs work while this replica holds the lease, and campaigns again
// if it loses it, until ctx is done.
func lead(ctx context.Context, cs kubernetes.Interface, cfg ControlConfig, work []func(context.Context) error) error {
	id := cfg.Identity
	if id == "" {
		id = os.Getenv("POD_NAME")
	}
	if id == "" {
		id, _ = os.Hostname()
	}
	d := cfg.LeaseDuration
	if d == 0 {
		d = 15 * time.Second
	}
	lock := &resourcelock.LeaseLock{
		LeaseMeta:  metav1.ObjectMeta{Name: LeaseName, Namespace: cfg.Namespace},
		Client:     cs.CoordinationV1(),
		LockConfig: resourcelock.ResourceLockConfig{Identity: id},
	}
	log := cfg.Log.With("component", "leader-election", "identity", id)
	for ctx.Err() == nil {
		le, err := leaderelection.NewLeaderElector(leaderelection.LeaderElectionConfig{
			Lock: lock, LeaseDuration: d, RenewDeadline: d * 2 / 3, RetryPeriod: d * 2 / 15,
			ReleaseOnCancel: true, Name: LeaseName,
			Callbacks: leaderelection.LeaderCallbacks{
				OnStartedLeading: func(ctx context.Context) {
					log.Info("leading: writing Secrets and root ConfigMaps")
					if cfg.Leading != nil {
						cfg.Leading()
					}
					var wg sync.WaitGroup
					for _, w := range work {
						wg.Add(1)
						go func() {
							defer wg.Done()
							if err := w(ctx); err != nil && ctx.Err() == nil {
								log.Error("leader work stopped", "error", err)
							}
						}()
					}
					wg.Wait()
				},
				OnStoppedLeading: func() { log.Info("not leading") },
				OnNewLeader: func(l string) {
					if l != id {
						log.Info("another replica leads", "leader", l)
					}
				},
			},
		})
		if err != nil {
			return err
		}
		le.Run(ctx) // returns when leadership is lost or ctx is done
	}
	return nil
}

// startWebhookServer serves the webhook with a certificate from the CA in
// Secret meshauth-webhook-ca (made on first start, shared by all replicas so
// the caBundle fits whichever replica the API server calls), and sets that
// CA as the caBundle of the webhook configuration: no certificate has to be
// shipped in the manifests.
func startWebhookServer(ctx context.Context, cs kubernetes.Interface, cfg ControlConfig, wh *Webhook) (*http.Server, error) {
	caKey, caCert, err := webhookCA(ctx, cs, cfg.Namespace)
	if err != nil {
		return nil, err
	}
	var ips []net.IP
	var dns []string
	for _, h := range cfg.WebhookHosts {
		if ip := net.ParseIP(h); ip != nil {
			ips = append(ips, ip)
		} else {
			dns = append(dns, h)
		}
	}
	certPEM, keyPEM, err := servingCert(caCert, caKey, dns, ips)
	if err != nil {
		return nil, err
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, err
	}
	wcfg := tlsprofile.New()
	wcfg.Certificates = []tls.Certificate{cert}
	lis, err := tls.Listen("tcp", cfg.WebhookListen, wcfg)
	if err != nil {
		return nil, fmt.Errorf("kube: webhook listen %s: %w", cfg.WebhookListen, err)
	}
	mux := http.NewServeMux()
	mux.Handle(WebhookPath, wh)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go srv.Serve(lis)
	if err := SetWebhookCABundle(ctx, cs, cfg.WebhookConfig, pemCert(caCert)); err != nil {
		cfg.Log.Warn("webhook caBundle not set; injection by label will fail until it is", "config", cfg.WebhookConfig, "error", err)
	}
	cfg.Log.Info("injection webhook listening", "addr", lis.Addr().String(), "path", WebhookPath)
	return srv, nil
}

// WebhookCASecret holds the webhook's CA (tls.crt, tls.key).
const WebhookCASecret = "meshauth-webhook-ca"

// webhookCA loads the webhook CA from its Secret, creating it if missing.
// When two replicas race to create it, the loser reads the winner's.
func webhookCA(ctx context.Context, cs kubernetes.Interface, ns string) (crypto.Signer, *x509.Certificate, error) {
	api := cs.CoreV1().Secrets(ns)
	s, err := api.Get(ctx, WebhookCASecret, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		key, cert, gerr := selfSignedCA("meshauth-webhook-ca")
		if gerr != nil {
			return nil, nil, gerr
		}
		der, gerr := x509.MarshalPKCS8PrivateKey(key)
		if gerr != nil {
			return nil, nil, gerr
		}
		s, err = api.Create(ctx, &corev1.Secret{
			ObjectMeta: metav1.ObjectMeta{Name: WebhookCASecret, Namespace: ns, Labels: map[string]string{"app.kubernetes.io/part-of": "meshauth"}},
			Type:       corev1.SecretTypeTLS,
			Data: map[string][]byte{
				corev1.TLSCertKey:       pemCert(cert),
				corev1.TLSPrivateKeyKey: pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}),
			},
		}, metav1.CreateOptions{})
		if apierrors.IsAlreadyExists(err) {
			s, err = api.Get(ctx, WebhookCASecret, metav1.GetOptions{})
		}
	}
	if err != nil {
		return nil, nil, fmt.Errorf("kube: webhook CA secret %s/%s: %w", ns, WebhookCASecret, err)
	}
	pair, err := tls.X509KeyPair(s.Data[corev1.TLSCertKey], s.Data[corev1.TLSPrivateKeyKey])
	if err != nil {
		return nil, nil, fmt.Errorf("kube: webhook CA secret %s/%s: %w (delete it to have a new one made)", ns, WebhookCASecret, err)
	}
	cert, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		return nil, nil, err
	}
	key, ok := pair.PrivateKey.(crypto.Signer)
	if !ok {
		return nil, nil, fmt.Errorf("kube: webhook CA key is not a signer")
	}
	return key, cert, nil
}

// SetWebhookCABundle sets caBundle on every webhook of the named
// MutatingWebhookConfiguration.
func SetWebhookCABundle(ctx context.Context, cs kubernetes.Interface, name string, caPEM []byte) error {
	api := cs.AdmissionregistrationV1().MutatingWebhookConfigurations()
	for attempt := 0; ; attempt++ {
		whc, err := api.Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		for i := range whc.Webhooks {
			whc.Webhooks[i].ClientConfig.CABundle = caPEM
		}
		_, err = api.Update(ctx, whc, metav1.UpdateOptions{})
		if apierrors.IsConflict(err) && attempt < 5 {
			continue
		}
		return err
	}
}

// PublishRoot keeps the ConfigMap istio-ca-root-cert (root-cert.pem: the
// current trust bundle's roots) in every namespace, for CSR-mode sidecars
// to verify the CA they call. It re-checks when a namespace is created,
// when the bundle changes, and every 30 seconds (a deleted or edited
// ConfigMap is repaired then).
func PublishRoot(ctx context.Context, cs kubernetes.Interface, authority *ca.CA, log *slog.Logger) error {
	kick := make(chan struct{}, 1)
	factory := informers.NewSharedInformerFactory(cs, 0)
	_, _ = factory.Core().V1().Namespaces().Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: func(any) {
			select {
			case kick <- struct{}{}:
			default:
			}
		},
	})
	factory.Start(ctx.Done())
	defer factory.Shutdown()
	for {
		b, changed := authority.Watch()
		roots := strings.Join(b.RootsPEM, "")
		nss, err := cs.CoreV1().Namespaces().List(ctx, metav1.ListOptions{})
		if err == nil {
			for _, ns := range nss.Items {
				if err := ensureRootConfigMap(ctx, cs, ns.Name, roots); err != nil && ctx.Err() == nil {
					log.Warn("publish root", "namespace", ns.Name, "error", err)
				}
			}
		} else if ctx.Err() == nil {
			log.Warn("list namespaces", "error", err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-changed:
		case <-kick:
		case <-time.After(30 * time.Second):
		}
	}
}
