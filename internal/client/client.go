// Package client dials the meshauth control plane the way every caller
// must: over TLS, trusting the mesh's roots (DIR/root-cert.pem or a given
// bundle) and accepting the server only if it presents the control plane's
// SPIFFE ID, spiffe://<td>/ns/meshauth-system/sa/meshd. meshctl uses it with
// the admin token or a join token; the sidecar agent uses it with a join
// token to bootstrap and with its own certificate to renew.
package client

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"

	"github.com/meshauth/meshauth/internal/identity"
	"github.com/meshauth/meshauth/internal/tlsprofile"
)

// DefaultAddr is the control plane's default address.
const DefaultAddr = "127.0.0.1:15012"

// Options says where the control plane is, what to trust and which
// credential to present. Zero values get the defaults named.
type Options struct {
	// Dir is the control plane's state directory: control.addr, root-cert.pem
	// and admin.token are read from it when the fields below are empty.
	Dir string
	// Addr of the control plane; empty: DIR/control.addr, then DefaultAddr.
	Addr string
	// Roots returns the current trust bundle; it is called on every
	// handshake so a rotating bundle is picked up. Nil: DIR/root-cert.pem.
	Roots func() *identity.Bundle
	// TrustDomain of the control plane (default: the trust domain in the
	// roots' SPIFFE URI SAN, then cluster.local).
	TrustDomain string
	// GetClientCertificate supplies the caller's certificate for mTLS
	// (renewal, Discovery). Nil: no client certificate.
	GetClientCertificate func(*tls.CertificateRequestInfo) (*tls.Certificate, error)
	// Token is sent as "authorization: Bearer <Token>" on every call.
	Token string
	// AdminToken, if set, reads the token from DIR/admin.token (Token wins).
	AdminToken bool
	// DialOptions are appended to the gRPC dial options.
	DialOptions []grpc.DialOption
}

// Reconnect is how a client comes back after the control plane was
// away: gRPC's default backoff grows to 120 s, so after a 10-minute outage
// sidecars took 90-115 s to reconnect (docs/reliability.md); capped at
// 15 s, with gRPC's jitter spreading a fleet's reconnects.
var Reconnect = grpc.ConnectParams{Backoff: backoff.Config{BaseDelay: time.Second, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 15 * time.Second}, MinConnectTimeout: 10 * time.Second}

// Keepalive is how every client of the control plane finds out that its
// connection is dead when no FIN or RST ever reaches it (issue #17, found
// by the chaos suite: after a partition the control plane had dropped its
// end, and the sidecars' Discovery and trust-bundle streams, which only
// receive, waited on the dead connection for good: no policy push and no
// revocation reached them). A ping every 10 s, the connection closed (and
// so the streams ended and redialed) when one goes 5 s unanswered; also
// without an open stream, so a connection kept for renewals is checked too.
// ServerKeepalive is the control plane's side of the agreement.
var Keepalive = keepalive.ClientParameters{Time: 10 * time.Second, Timeout: 5 * time.Second, PermitWithoutStream: true}

// ServerKeepalive are the control plane's gRPC server options that match
// Keepalive: clients may ping every 5 s (gRPC's default enforcement, 5
// minutes, answers a 10 s ping with GOAWAY "too_many_pings"), and the
// server pings its side as well, so that it forgets a dead sidecar's
// streams (meshauth_push_sidecars_connected) within half a minute.
func ServerKeepalive() []grpc.ServerOption {
	return []grpc.ServerOption{
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 5 * time.Second, PermitWithoutStream: true}),
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: 20 * time.Second, Timeout: 10 * time.Second}),
	}
}

// Dial returns a connection to the control plane. gRPC connects lazily:
// a wrong address or trust fails on the first call, with the TLS reason.
func Dial(ctx context.Context, o Options) (*grpc.ClientConn, error) {
	if o.Dir == "" {
		o.Dir = ".meshauth"
	}
	addr, err := resolveAddr(o)
	if err != nil {
		return nil, err
	}
	roots := o.Roots
	if roots == nil {
		b, err := LoadRoots(o.Dir, o.TrustDomain)
		if err != nil {
			return nil, err
		}
		roots = func() *identity.Bundle { return b }
	}
	td := o.TrustDomain
	if td == "" {
		td = roots().TrustDomain
	}
	tdID, err := spiffeid.TrustDomainFromString(td)
	if err != nil {
		return nil, fmt.Errorf("client: trust domain %q: %w", td, err)
	}
	serverID, err := spiffeid.FromPath(tdID, "/ns/meshauth-system/sa/meshd")
	if err != nil {
		return nil, fmt.Errorf("client: %w", err)
	}
	// The server's chain is verified against the current bundle, with its
	// revocations (a revoked control-plane certificate, its key stolen, is
	// refused like any other), and exactly the control plane's ID is
	// authorized; no hostname checks: its certificate has only the SPIFFE ID.
	tlsCfg := tlsprofile.New()
	tlsCfg.InsecureSkipVerify = true
	tlsCfg.VerifyConnection = controlPlaneVerifier(roots, serverID)
	tlsCfg.GetClientCertificate = o.GetClientCertificate
	if tlsCfg.GetClientCertificate == nil {
		tlsCfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return &tls.Certificate{}, nil // none: bootstrap or admin call
		}
	}
	tok := o.Token
	if tok == "" && o.AdminToken {
		b, err := os.ReadFile(filepath.Join(o.Dir, "admin.token"))
		if err != nil {
			return nil, fmt.Errorf("client: read admin token: %w (is --dir the control plane's state dir?)", err)
		}
		tok = strings.TrimSpace(string(b))
	}
	opts := []grpc.DialOption{grpc.WithTransportCredentials(credentials.NewTLS(tlsCfg)), grpc.WithKeepaliveParams(Keepalive), grpc.WithConnectParams(Reconnect)}
	if tok != "" {
		opts = append(opts, grpc.WithPerRPCCredentials(bearerCreds(tok)))
	}
	opts = append(opts, o.DialOptions...)
	conn, err := grpc.NewClient(addr, opts...)
	if err != nil {
		return nil, fmt.Errorf("client: dial %s: %w", addr, err)
	}
	return conn, nil
}

func resolveAddr(o Options) (string, error) {
	if o.Addr != "" {
		return o.Addr, nil
	}
	b, err := os.ReadFile(filepath.Join(o.Dir, "control.addr"))
	if err == nil {
		if a := strings.TrimSpace(string(b)); a != "" {
			return a, nil
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return "", fmt.Errorf("client: read %s: %w", filepath.Join(o.Dir, "control.addr"), err)
	}
	return DefaultAddr, nil
}

// controlPlaneVerifier is identity.VerifyConnection authorizing serverID,
// with the refusal of a revoked certificate explained.
func controlPlaneVerifier(roots func() *identity.Bundle, serverID spiffeid.ID) func(tls.ConnectionState) error {
	verify := identity.VerifyConnection(roots, time.Now, identity.AuthorizeOneOf(serverID))
	return func(cs tls.ConnectionState) error {
		err := verify(cs)
		var rev *identity.RevokedError
		if errors.As(err, &rev) {
			return fmt.Errorf("client: %w: the control plane presented certificate serial %s, which the trust bundle (version %d) lists as revoked; refusing it (the real control plane re-issues its own certificate when it is revoked: one that keeps presenting a revoked certificate may be someone holding its stolen key)",
				identity.ErrRevoked, rev.Serial, rev.BundleVersion)
		}
		if err != nil {
			return fmt.Errorf("client: control plane certificate: %w", err)
		}
		return nil
	}
}

// FileRevocations, in the control plane's state directory, lists the
// bundle's revoked serials (written by meshd control with root-cert.pem),
// so that a client that reads the directory refuses a revoked control
// plane certificate too.
const FileRevocations = "revocations.json"

// Revocations is the content of FileRevocations.
type Revocations struct {
	BundleVersion uint64 `json:"bundle_version"`
	Revocations   []struct {
		Serial   string `json:"serial"`
		SPIFFEID string `json:"spiffe_id"`
	} `json:"revocations"`
}

// LoadRoots reads DIR/root-cert.pem as a bundle, with the revoked serials
// of DIR/revocations.json when the control plane wrote one. The trust
// domain is td, or the one named in the roots' SPIFFE URI SAN, or
// cluster.local.
func LoadRoots(dir, td string) (*identity.Bundle, error) {
	p := filepath.Join(dir, "root-cert.pem")
	data, err := os.ReadFile(p)
	if err != nil {
		return nil, fmt.Errorf("client: read %s: %w (start `meshd control --dir %s` first, or pass the roots)", p, err, dir)
	}
	b, err := BundleFromPEM(data, td)
	if err != nil {
		return nil, err
	}
	rp := filepath.Join(dir, FileRevocations)
	rdata, err := os.ReadFile(rp)
	if errors.Is(err, os.ErrNotExist) {
		return b, nil // a control plane that does not write it
	}
	if err != nil {
		return nil, fmt.Errorf("client: read %s: %w", rp, err)
	}
	var revs Revocations
	if err := json.Unmarshal(rdata, &revs); err != nil {
		return nil, fmt.Errorf("client: %s: %w (meshd control rewrites it on every bundle change)", rp, err)
	}
	b.Version = revs.BundleVersion
	for _, r := range revs.Revocations {
		b.Revoked[r.Serial] = r.SPIFFEID
	}
	return b, nil
}

// BundleFromPEM builds a bundle from PEM roots, learning the trust domain
// from the roots' URI SAN when td is empty.
func BundleFromPEM(data []byte, td string) (*identity.Bundle, error) {
	certs, err := identity.ParseCertsPEM(data)
	if err != nil {
		return nil, fmt.Errorf("client: roots: %w", err)
	}
	if td == "" {
		td = TrustDomainOf(certs)
	}
	return &identity.Bundle{TrustDomain: td, Roots: certs, Revoked: map[string]string{}}, nil
}

// TrustDomainOf returns the trust domain in the first root with a SPIFFE
// URI SAN (meshauth's roots carry spiffe://<td>), else cluster.local.
func TrustDomainOf(roots []*x509.Certificate) string {
	for _, r := range roots {
		for _, u := range r.URIs {
			if u.Scheme == "spiffe" && u.Host != "" {
				return u.Host
			}
		}
	}
	return identity.DefaultTrustDomain
}

type bearerCreds string

func (b bearerCreds) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + string(b)}, nil
}

// RequireTransportSecurity keeps tokens off plaintext connections.
func (bearerCreds) RequireTransportSecurity() bool { return true }
