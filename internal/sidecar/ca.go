package sidecar

import (
	"context"
	"fmt"
	"sync"
	"time"

	"google.golang.org/grpc"

	pb "github.com/meshauth/meshauth/api/meshauth/v1"
	"github.com/meshauth/meshauth/internal/agent"
	"github.com/meshauth/meshauth/internal/meshapi/sidecarapi"
)

// GRPCCA is the agent's CA (agent.CA) over the control plane's
// CertificateAuthority gRPC service: a connection for each call, closed
// when the call ends.
type GRPCCA struct {
	// Dial opens a connection to the control plane. With bootstrap it
	// authenticates with the join token; otherwise it presents the agent's
	// current certificate.
	Dial func(ctx context.Context, bootstrap bool) (*grpc.ClientConn, error)
}

var _ agent.CA = GRPCCA{}

// Sign implements agent.CA with CreateCertificate.
func (c GRPCCA) Sign(ctx context.Context, csr []byte, ttl time.Duration, bootstrap bool) ([]byte, []string, error) {
	conn, err := c.Dial(ctx, bootstrap)
	if err != nil {
		return nil, nil, fmt.Errorf("connect to CA: %w", err)
	}
	defer conn.Close()
	resp, err := pb.NewCertificateAuthorityClient(conn).CreateCertificate(ctx,
		&pb.CreateCertificateRequest{Csr: csr, TtlSeconds: int64(ttl / time.Second)})
	if err != nil {
		return nil, nil, fmt.Errorf("CreateCertificate: %w", err)
	}
	var chainPEM []byte
	for _, c := range resp.CertChain {
		chainPEM = append(chainPEM, c...)
	}
	return chainPEM, resp.Roots, nil
}

// SyncBundle implements agent.CA with SyncTrustBundle.
func (c GRPCCA) SyncBundle(ctx context.Context, instance string, update func(agent.BundleUpdate, agent.Acker)) error {
	conn, err := c.Dial(ctx, false)
	if err != nil {
		return err
	}
	defer conn.Close()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := pb.NewCertificateAuthorityClient(conn).SyncTrustBundle(ctx)
	if err != nil {
		return err
	}
	var mu sync.Mutex // Send from one goroutine at a time
	send := func(m *pb.BundleAck) error {
		mu.Lock()
		defer mu.Unlock()
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return stream.Send(m)
	}
	if err := send(&pb.BundleAck{Instance: instance}); err != nil {
		return err
	}
	ack := func(version uint64, roots []string, installErr string) error {
		return send(&pb.BundleAck{Version: version, RootsSha256: roots, Error: installErr})
	}
	for {
		tb, err := stream.Recv()
		if err != nil {
			return err
		}
		update(agent.BundleUpdate{TrustDomain: tb.TrustDomain, Version: tb.Version, Roots: tb.Roots, Revoked: sidecarapi.RevokedFromProto(tb.Revocations)}, ack)
	}
}
