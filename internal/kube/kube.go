// Package kube runs meshauth on Kubernetes: the CA controller that keeps one
// Secret istio.<serviceaccount> per ServiceAccount (the seed's secret mode),
// the TokenReview authenticator for CSR mode, the registry and config sources
// that read Services, EndpointSlices, Pods and the config CRDs, and the
// sidecar injector used by `meshctl kube-inject` and the mutating webhook.
//
// Only the control plane and meshctl import this package: it brings in
// client-go, which the sidecar binary must never link (see deps_test.go).
package kube

// Names shared with the seed (Istio 0.8), so its kubectl commands work.
const (
	// SecretType is the type of every workload Secret the CA controller writes.
	SecretType = "istio.io/key-and-cert"
	// SecretPrefix + serviceaccount is the Secret's name.
	SecretPrefix = "istio."
	// AnnotationServiceAccount on a workload Secret names its ServiceAccount.
	AnnotationServiceAccount = "istio.io/service-account.name"

	// Keys of a workload Secret (and the files under /etc/certs).
	CertChainKey = "cert-chain.pem"
	KeyKey       = "key.pem"
	RootCertKey  = "root-cert.pem"

	// CASecret holds the self-signed root in the control plane's namespace.
	CASecret = "istio-ca-secret"
	// CASecretType is the type of istio-ca-secret, as Citadel wrote it.
	CASecretType = "istio.io/ca-root"
	CACertKey    = "ca-cert.pem"
	CAKeyKey     = "ca-key.pem"
	// PluggedCASecret ("cacerts") holds an operator-supplied CA:
	// ca-cert.pem, ca-key.pem, cert-chain.pem, root-cert.pem.
	PluggedCASecret = "cacerts"
	// PluggedCANextSecret ("cacerts-next") holds the operator's next CA,
	// with the keys of cacerts, during a staged rotation (`meshctl ca
	// rotate-root --from cacerts-next`); once the old root is retired its
	// content replaces cacerts' and it is deleted.
	PluggedCANextSecret = "cacerts-next"

	// RootCertConfigMap is published in every namespace with root-cert.pem,
	// for CSR-mode sidecars to verify the CA they call.
	RootCertConfigMap = "istio-ca-root-cert"

	// LabelInjection=enabled on a namespace turns the webhook on for it.
	LabelInjection = "istio-injection"
)

// SecretName is the workload Secret for a ServiceAccount: istio.<sa>.
func SecretName(serviceAccount string) string { return SecretPrefix + serviceAccount }
