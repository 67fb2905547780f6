package agent

import (
	"context"
	"time"
)

// CA is how the agent reaches the certificate authority. The agent owns
// this seam; internal/sidecar implements it over the control plane's
// CertificateAuthority gRPC service (sidecar.GRPCCA).
type CA interface {
	// Sign has the CA sign csr (DER) for ttl (0: the CA's default). With
	// bootstrap the request authenticates with the join token (and fails
	// with ErrNoToken, wrapped, when there is none); otherwise it presents
	// the agent's current certificate. It returns the certificate chain
	// (PEM, leaf first) and the CA's roots (PEM). Errors say which step
	// failed ("connect to CA: ...", "CreateCertificate: ...") and wrap the
	// CA's gRPC status, which decides Permanent.
	Sign(ctx context.Context, csr []byte, ttl time.Duration, bootstrap bool) (chainPEM []byte, roots []string, err error)
	// SyncBundle opens the sidecar's bundle stream (SyncTrustBundle),
	// authenticated with the agent's current certificate, names the
	// sidecar's instance, and calls update for each bundle received until
	// the stream ends; it returns what ended it. ack (safe to call from
	// any goroutine while the stream lasts) tells the CA a bundle version
	// is installed in the verifier the proxy uses (installErr "") or could
	// not be.
	SyncBundle(ctx context.Context, instance string, update func(u BundleUpdate, ack Acker)) error
}

// BundleUpdate is one trust bundle as the CA sent it, not yet checked.
type BundleUpdate struct {
	// TrustDomain may be empty: then it is the agent's own.
	TrustDomain string
	Version     uint64
	// Roots are PEM certificates.
	Roots []string
	// Revoked maps a revoked certificate's serial to its SPIFFE ID.
	Revoked map[string]string
}

// Acker acknowledges a bundle version on the bundle stream: its roots
// (RootFingerprints) as installed, or why it could not be installed.
type Acker func(version uint64, roots []string, installErr string) error
