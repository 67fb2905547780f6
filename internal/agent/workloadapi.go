package agent

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"

	workload "github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/meshauth/meshauth/internal/identity"
)

// WorkloadAPI serves the SPIFFE Workload API (X.509 part) from a Source on a
// unix socket. Every connected client gets the current SVID and bundle at
// once and again after every rotation, as go-spiffe's X509Source expects.
// The socket is the authorization boundary, as in SPIRE's agent: whoever can
// open it is the workload this sidecar serves.
type WorkloadAPI struct {
	workload.UnimplementedSpiffeWorkloadAPIServer
	src Source
	log *slog.Logger
	srv *grpc.Server
}

// NewWorkloadAPI returns a server for src; log may be nil.
func NewWorkloadAPI(src Source, log *slog.Logger) *WorkloadAPI {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	w := &WorkloadAPI{src: src, log: log, srv: grpc.NewServer()}
	workload.RegisterSpiffeWorkloadAPIServer(w.srv, w)
	return w
}

// Serve listens on the unix socket path (replacing a stale one) until ctx ends.
func (w *WorkloadAPI) Serve(ctx context.Context, path string) error {
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("agent: workload API socket %s: %w", path, err)
	}
	l, err := net.Listen("unix", path)
	if err != nil {
		return fmt.Errorf("agent: workload API socket: %w", err)
	}
	// The app may run as another user than the sidecar (uid 1337).
	os.Chmod(path, 0o666)
	go func() {
		<-ctx.Done()
		w.srv.Stop()
	}()
	err = w.srv.Serve(l)
	if ctx.Err() != nil {
		return nil
	}
	return err
}

// checkHeader enforces the Workload API's security header, which keeps
// browsers and SSRF-style proxies from reaching the API.
func checkHeader(ctx context.Context) error {
	md, _ := metadata.FromIncomingContext(ctx)
	if v := md.Get("workload.spiffe.io"); len(v) != 1 || v[0] != "true" {
		return status.Error(codes.InvalidArgument, "security header missing from request")
	}
	return nil
}

// FetchX509SVID implements the Workload API.
func (w *WorkloadAPI) FetchX509SVID(_ *workload.X509SVIDRequest, stream grpc.ServerStreamingServer[workload.X509SVIDResponse]) error {
	ctx := stream.Context()
	if err := checkHeader(ctx); err != nil {
		return err
	}
	var lastSVID *SVID
	var lastBundle *identity.Bundle
	for {
		changed := w.src.Changed()
		s, b := w.src.SVID(), w.src.Bundle()
		if s != nil && b != nil && (s != lastSVID || b != lastBundle) {
			keyDER, err := x509.MarshalPKCS8PrivateKey(s.Key)
			if err != nil {
				return status.Errorf(codes.Internal, "marshal key: %v", err)
			}
			resp := &workload.X509SVIDResponse{Svids: []*workload.X509SVID{{
				SpiffeId:    s.URI,
				X509Svid:    concatDER(s.Chain),
				X509SvidKey: keyDER,
				Bundle:      concatDER(b.Roots),
			}}}
			if err := stream.Send(resp); err != nil {
				return err
			}
			w.log.Debug("workload API: sent X509-SVID", "spiffe_id", s.URI, "serial", s.Serial())
			lastSVID, lastBundle = s, b
		}
		select {
		case <-ctx.Done():
			return nil
		case <-changed:
		}
	}
}

// FetchX509Bundles implements the Workload API.
func (w *WorkloadAPI) FetchX509Bundles(_ *workload.X509BundlesRequest, stream grpc.ServerStreamingServer[workload.X509BundlesResponse]) error {
	ctx := stream.Context()
	if err := checkHeader(ctx); err != nil {
		return err
	}
	var last *identity.Bundle
	for {
		changed := w.src.Changed()
		if b := w.src.Bundle(); b != nil && b != last {
			if err := stream.Send(&workload.X509BundlesResponse{Bundles: map[string][]byte{
				"spiffe://" + b.TrustDomain: concatDER(b.Roots),
			}}); err != nil {
				return err
			}
			last = b
		}
		select {
		case <-ctx.Done():
			return nil
		case <-changed:
		}
	}
}

func concatDER(cs []*x509.Certificate) []byte {
	var out []byte
	for _, c := range cs {
		out = append(out, c.Raw...)
	}
	return out
}
