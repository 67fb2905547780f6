package sidecar

import (
	"context"
	"crypto/tls"
	"fmt"
	"os"
	"path/filepath"

	"google.golang.org/grpc"

	"github.com/meshauth/meshauth/internal/agent"
	"github.com/meshauth/meshauth/internal/client"
	"github.com/meshauth/meshauth/internal/identity"
	"github.com/meshauth/meshauth/internal/policy"
	"github.com/meshauth/meshauth/internal/push/pushclient"
)

// controlConn holds how the sidecar reaches the control plane: its
// address, the roots to verify it before the first bundle arrives, and the
// join token.
type controlConn struct {
	addr, dir string
	tokens    *agent.TokenSource
	initial   *identity.Bundle
	store     *agent.Store
}

func newControlConn(cfg Config, id identity.ID, store *agent.Store) (*controlConn, error) {
	c := &controlConn{addr: cfg.Control, dir: cfg.ControlDir, store: store}
	if c.dir == "" {
		c.dir = cfg.CertsDir // client.Dial reads control.addr from it if present
	}
	// The token file is read again on every use, so a new join token
	// written into it (or a rotated Kubernetes token) is picked up.
	var err error
	if c.tokens, err = agent.NewTokenSource(cfg.Token, cfg.TokenFile); err != nil {
		return nil, fmt.Errorf("--token-file: %w", err)
	}
	if cfg.CARoots == "" && cfg.ControlDir != "" {
		// The control plane's own directory: its roots and the revoked
		// serials it wrote beside them, so a revoked control-plane
		// certificate is refused before the first bundle arrives too (the
		// bootstrap call carries the join token).
		if c.initial, err = client.LoadRoots(cfg.ControlDir, id.TrustDomain); err != nil {
			return nil, fmt.Errorf("control plane roots: %w", err)
		}
		return c, nil
	}
	rootsFile := cfg.CARoots
	if rootsFile == "" {
		rootsFile = filepath.Join(cfg.CertsDir, agent.RootFile)
	}
	if data, err := os.ReadFile(rootsFile); err == nil {
		if c.initial, err = identity.NewBundle(id.TrustDomain, 0, []string{string(data)}, nil); err != nil {
			return nil, fmt.Errorf("control plane roots %s: %w", rootsFile, err)
		}
	} else {
		return nil, fmt.Errorf("control plane roots: %w (pass --ca-roots or --control-dir so the sidecar can verify the control plane)", err)
	}
	return c, nil
}

// roots is the bundle to verify the control plane with: the agent's current
// one (it follows root rotations), else the configured roots.
func (c *controlConn) roots() *identity.Bundle {
	if b := c.store.Bundle(); b != nil {
		return b
	}
	return c.initial
}

// controlDialOptions are the gRPC options of the sidecar's connections to
// the control plane: two streams that idle for hours (trust bundle,
// policy) and a call per renewal, each message small. gRPC's default
// 32 KiB read buffer and 32 KiB write buffer per connection would stay
// allocated all that time in every pod; the read buffer is redundant over
// TLS (tls.Conn buffers a whole record, so the framer's small reads are
// copies, not syscalls), and the write buffer is taken from a pool only
// while a write is under way.
var controlDialOptions = []grpc.DialOption{grpc.WithReadBufferSize(0), grpc.WithSharedWriteBuffer(true)}

// dial opens a connection; with mtls it presents the workload certificate,
// otherwise the join token.
func (c *controlConn) dial(ctx context.Context, mtls bool) (*grpc.ClientConn, error) {
	o := client.Options{Dir: c.dir, Addr: c.addr, Roots: c.roots, TrustDomain: c.initial.TrustDomain, DialOptions: controlDialOptions}
	if mtls {
		o.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			if s := c.store.SVID(); s != nil {
				return s.TLS, nil
			}
			return &tls.Certificate{}, nil
		}
	} else {
		tok, err := c.tokens.Token()
		if err != nil {
			return nil, err
		}
		o.Token = tok
	}
	return client.Dial(ctx, o)
}

// pushSource adapts the push client to the proxy's ConfigSource.
type pushSource struct{ c *pushclient.Client }

func (p pushSource) Current() *policy.Snapshot {
	if u := p.c.Current(); u != nil {
		return u.Snapshot
	}
	return nil
}
func (p pushSource) Changed() <-chan struct{} { return p.c.Changed() }

// ca is the agent's CA through this connection.
func (c *controlConn) ca() GRPCCA {
	return GRPCCA{Dial: func(ctx context.Context, bootstrap bool) (*grpc.ClientConn, error) {
		return c.dial(ctx, !bootstrap)
	}}
}
