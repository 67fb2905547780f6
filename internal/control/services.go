package control

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/meshauth/meshauth/api/meshauth/v1"
	"github.com/meshauth/meshauth/internal/ca"
	"github.com/meshauth/meshauth/internal/identity"
	"github.com/meshauth/meshauth/internal/meshapi"
)

// ErrorDomain is the ErrorInfo domain of meshauth's gRPC errors; the
// ErrorInfo reason is the CA's constant reason (ca.Reason*).
const ErrorDomain = "meshauth.io"

// ReasonFromError returns the meshauth reason carried by a gRPC error, or "".
func ReasonFromError(err error) string {
	st, ok := status.FromError(err)
	if !ok {
		return ""
	}
	for _, d := range st.Details() {
		if ei, ok := d.(*errdetails.ErrorInfo); ok && ei.Domain == ErrorDomain {
			return ei.Reason
		}
	}
	return ""
}

// toStatus maps a CA error to a gRPC status. The caller sees the CA's
// message and reason; an internal cause is logged and replaced by a generic
// message, so no store or key detail leaks to a client.
func (s *Server) toStatus(ctx context.Context, err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return status.FromContextError(err).Err()
	}
	var e *ca.Error
	if !errors.As(err, &e) {
		s.log.Error("internal error", "error", err)
		return withReason(codes.Internal, ca.ReasonInternal, "internal error in the control plane; see its log")
	}
	code := map[ca.Kind]codes.Code{
		ca.KindInvalid:            codes.InvalidArgument,
		ca.KindUnauthenticated:    codes.Unauthenticated,
		ca.KindDenied:             codes.PermissionDenied,
		ca.KindNotFound:           codes.NotFound,
		ca.KindFailedPrecondition: codes.FailedPrecondition,
		ca.KindInternal:           codes.Internal,
	}[e.Kind]
	msg := e.Msg
	if e.Kind == ca.KindInternal {
		s.log.Error("internal error", "error", err)
		msg = e.Msg + " (internal error; see the control plane's log)"
	}
	return withReason(code, e.Reason, msg)
}

func withReason(code codes.Code, reason, msg string) error {
	st := status.New(code, msg)
	if d, err := st.WithDetails(&errdetails.ErrorInfo{Reason: reason, Domain: ErrorDomain}); err == nil {
		return d.Err()
	}
	return st.Err()
}

func statusf(_ context.Context, reason, format string, args ...any) error {
	return withReason(codes.Unauthenticated, reason, fmt.Sprintf(format, args...))
}

// bundleProto converts the CA's bundle to its wire form, for
// GetTrustBundle and WatchTrustBundle (the one stream that carries it to
// sidecars). internal/sidecarapi.BundleFromProto is the other direction.
func bundleProto(b *ca.TrustBundle) *pb.TrustBundle {
	out := &pb.TrustBundle{Version: b.Version, TrustDomain: b.TrustDomain, Roots: b.RootsPEM}
	for _, r := range b.Revocations {
		out.Revocations = append(out.Revocations, &pb.Revocation{
			Serial: r.Serial, SpiffeId: r.SPIFFEID, NotAfter: r.NotAfter.Unix(),
			RevokedAt: r.RevokedAt.Unix(), Reason: r.Reason,
		})
	}
	return out
}

type caService struct {
	pb.UnimplementedCertificateAuthorityServer
	s *Server
}

func (c *caService) CreateCertificate(ctx context.Context, req *pb.CreateCertificateRequest) (*pb.CreateCertificateResponse, error) {
	s := c.s
	caller, err := ca.Authenticate(ctx, ca.Credentials{PeerCertificates: peerCerts(ctx), BearerToken: bearer(ctx)}, s.auths...)
	if err != nil {
		s.ca.CountRefusal(err)
		return nil, s.toStatus(ctx, err)
	}
	// Clamp before converting so a huge value cannot overflow into a valid
	// duration; the CA then refuses it as over the maximum or negative.
	const limit = int64(1<<62) / int64(time.Second)
	ttl := min(max(req.TtlSeconds, -limit), limit)
	iss, err := s.ca.Sign(ctx, caller, req.Csr, time.Duration(ttl)*time.Second)
	if err != nil {
		return nil, s.toStatus(ctx, err)
	}
	return &pb.CreateCertificateResponse{CertChain: iss.ChainPEM, Roots: iss.RootsPEM, SpiffeId: iss.ID.String(), Serial: iss.Serial}, nil
}

func (c *caService) GetTrustBundle(ctx context.Context, _ *pb.GetTrustBundleRequest) (*pb.TrustBundle, error) {
	return bundleProto(c.s.ca.Bundle()), nil
}

// WatchTrustBundle sends the bundle now and after every change. Bundles are
// public (roots and revoked serials), so no credential is needed.
func (c *caService) WatchTrustBundle(_ *pb.GetTrustBundleRequest, stream grpc.ServerStreamingServer[pb.TrustBundle]) error {
	ctx := stream.Context()
	for {
		b, ch := c.s.ca.Watch()
		if err := stream.Send(bundleProto(b)); err != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return nil
		case <-c.s.stopping:
			return status.Error(codes.Unavailable, "control plane shutting down; reconnect")
		case <-ch:
		}
	}
}

// SyncTrustBundle is the sidecar's bundle stream: WatchTrustBundle, with
// the sidecar's ACKs coming back on the same stream (internal/ca
// fleet.go). It needs a workload certificate that verifies against the
// bundle: an ACK counts for the sidecar that holds it and nobody else.
func (c *caService) SyncTrustBundle(stream grpc.BidiStreamingServer[pb.BundleAck, pb.TrustBundle]) error {
	s := c.s
	ctx := stream.Context()
	id, err := s.PeerIdentity(ctx)
	if err != nil {
		return withReason(codes.Unauthenticated, ca.ReasonCallerCert, "SyncTrustBundle needs the sidecar's workload certificate (mTLS), which an ACK is counted for: "+err.Error())
	}
	hello, err := stream.Recv()
	if err != nil {
		return err
	}
	bs, err := s.ca.OpenBundleStream(peerCerts(ctx)[0], id, hello.Instance)
	if err != nil {
		s.log.Warn("refused bundle stream", "spiffe_id", id.String(), "instance", hello.Instance, "reason", ca.ReasonOf(err), "error", err)
		return s.toStatus(ctx, err)
	}
	defer bs.Close()
	acks := make(chan *pb.BundleAck)
	recvErr := make(chan error, 1)
	go func() {
		for {
			m, err := stream.Recv()
			if err != nil {
				recvErr <- err
				return
			}
			select {
			case acks <- m:
			case <-ctx.Done():
				return
			}
		}
	}()
	for {
		b, ch := s.ca.Watch()
		bs.Sent(b)
		if err := stream.Send(bundleProto(b)); err != nil {
			return err
		}
		if err := c.awaitChange(ctx, bs, ch, acks, recvErr); err != nil || ctx.Err() != nil {
			return err
		}
	}
}

// awaitChange takes the sidecar's ACKs until the bundle changes (nil),
// the stream ends, or an ACK is refused (the stream ends with the
// refusal).
func (c *caService) awaitChange(ctx context.Context, bs *ca.BundleStream, changed <-chan struct{}, acks <-chan *pb.BundleAck, recvErr <-chan error) error {
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-c.s.stopping:
			return status.Error(codes.Unavailable, "control plane shutting down; reconnect")
		case err := <-recvErr:
			if errors.Is(err, io.EOF) {
				return status.Error(codes.Canceled, "sidecar closed its bundle stream")
			}
			return err
		case m := <-acks:
			if err := bs.Ack(m.Version, m.RootsSha256, m.Error); err != nil {
				c.s.log.Warn("refused bundle ACK; ending the stream", "sidecar", bs.Key(), "version", m.Version, "reason", ca.ReasonOf(err), "error", err)
				return c.s.toStatus(ctx, err)
			}
		case <-changed:
			return nil
		}
	}
}

// adminService serves the Admin API. The interceptor has already checked
// the admin token for every method, including the config methods that the
// config plane provides.
type adminService struct {
	pb.UnimplementedAdminServer
	s *Server
}

func (a *adminService) CreateJoinToken(ctx context.Context, req *pb.CreateJoinTokenRequest) (*pb.CreateJoinTokenResponse, error) {
	id, err := identity.New(a.s.ca.TrustDomain(), req.Namespace, req.ServiceAccount)
	if err != nil {
		return nil, withReason(codes.InvalidArgument, "bad_identity", err.Error())
	}
	tok, err := a.s.ca.CreateJoinToken(id, time.Duration(req.TtlSeconds)*time.Second, int(req.Uses))
	if err != nil {
		return nil, a.s.toStatus(ctx, err)
	}
	return &pb.CreateJoinTokenResponse{Token: tok.Secret, SpiffeId: id.String(), ExpiresAt: tok.ExpiresAt.Unix(), Uses: int32(tok.Uses)}, nil
}

func (a *adminService) Revoke(ctx context.Context, req *pb.RevokeRequest) (*pb.RevokeResponse, error) {
	revs, version, err := a.s.ca.Revoke(req.Serial, req.SpiffeId, req.Reason)
	if err != nil {
		return nil, a.s.toStatus(ctx, err)
	}
	out := &pb.RevokeResponse{BundleVersion: version}
	for _, r := range revs {
		out.Serials = append(out.Serials, r.Serial)
	}
	return out, nil
}

// RotateRoot starts a rotation, retires the old roots (Retire, Force) or
// forgets sidecars (Forget).
func (a *adminService) RotateRoot(ctx context.Context, req *pb.RotateRootRequest) (*pb.RotateRootResponse, error) {
	switch {
	case len(req.Forget) > 0:
		keys, err := a.s.ca.ForgetSidecars(req.Forget)
		if err != nil {
			return nil, a.s.toStatus(ctx, err)
		}
		return &pb.RotateRootResponse{Forgotten: keys, BundleVersion: a.s.ca.Bundle().Version}, nil
	case req.Retire:
		broken, err := a.s.ca.RetireOldRoots(req.Force)
		if err != nil {
			return nil, a.s.toStatus(ctx, err)
		}
		return &pb.RotateRootResponse{Broken: broken, BundleVersion: a.s.ca.Bundle().Version}, nil
	}
	r, err := a.s.ca.RotateRoot(time.Duration(req.OverlapSeconds)*time.Second, req.From)
	if err != nil {
		return nil, a.s.toStatus(ctx, err)
	}
	return &pb.RotateRootResponse{NewRootFingerprint: r.NewRoot, MinOverlapUntil: r.MinOverlapUntil.Unix(), BundleVersion: r.BundleVersion}, nil
}

func (a *adminService) RotationStatus(ctx context.Context, _ *pb.RotationStatusRequest) (*pb.RotationStatusResponse, error) {
	st, err := a.s.ca.RotationStatus()
	if err != nil {
		return nil, a.s.toStatus(ctx, err)
	}
	return meshapi.RotationToProto(st), nil
}

func (a *adminService) CAStatus(ctx context.Context, _ *pb.CAStatusRequest) (*pb.CAStatusResponse, error) {
	st, err := a.s.ca.Status()
	if err != nil {
		return nil, a.s.toStatus(ctx, err)
	}
	m, err := meshapi.StatusToProto(st)
	if err != nil {
		return nil, a.s.toStatus(ctx, err)
	}
	return m, nil
}

func (a *adminService) ListIssued(ctx context.Context, req *pb.ListIssuedRequest) (*pb.ListIssuedResponse, error) {
	id := ""
	if req.SpiffeId != "" {
		parsed, err := identity.Parse(req.SpiffeId)
		if err != nil {
			return nil, withReason(codes.InvalidArgument, "bad_identity", err.Error())
		}
		id = parsed.String()
	}
	if req.Limit < 0 {
		return nil, withReason(codes.InvalidArgument, "bad_limit", fmt.Sprintf("limit %d: want 0 (all) or more", req.Limit))
	}
	entries, matched, err := a.s.ca.ListIssued(id, req.OnlyValid, int(req.Limit))
	if err != nil {
		return nil, a.s.toStatus(ctx, err)
	}
	return &pb.ListIssuedResponse{Entries: meshapi.IssuedToProto(entries), Matched: int32(matched)}, nil
}

// ApplyConfig and GetState are the config plane's.
func (a *adminService) ApplyConfig(ctx context.Context, req *pb.ApplyConfigRequest) (*pb.ApplyConfigResponse, error) {
	return a.s.plane.ApplyConfig(ctx, req)
}

func (a *adminService) GetState(ctx context.Context, req *pb.GetStateRequest) (*pb.GetStateResponse, error) {
	return a.s.plane.GetState(ctx, req)
}
