package agent

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"slices"
	"syscall"

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
// The API hands out the workload's private key, so a connection is served
// only if its peer process (SO_PEERCRED) runs as an allowed uid: the
// sidecar's own (an app it started with `meshd sidecar -- app` runs as it)
// and those in AllowUIDs (an app container of another user that shares the
// socket). Anyone else is refused and logged, whatever the socket's mode.
type WorkloadAPI struct {
	workload.UnimplementedSpiffeWorkloadAPIServer
	src Source
	log *slog.Logger
	srv *grpc.Server
	// AllowUIDs are uids besides the sidecar's own that may use the API.
	AllowUIDs []int
	// selfUID is the sidecar's uid (os.Getuid; -1 in tests that want only
	// AllowUIDs).
	selfUID int
}

// NewWorkloadAPI returns a server for src; log may be nil.
func NewWorkloadAPI(src Source, log *slog.Logger) *WorkloadAPI {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	w := &WorkloadAPI{src: src, log: log, srv: grpc.NewServer(), selfUID: os.Getuid()}
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
	// The peer check below is the authorization; the mode only keeps other
	// users from connecting at all when no other uid is allowed.
	mode := os.FileMode(0o600)
	if len(w.AllowUIDs) > 0 {
		mode = 0o666
	}
	if err := os.Chmod(path, mode); err != nil {
		l.Close()
		return fmt.Errorf("agent: workload API socket %s: %w", path, err)
	}
	go func() {
		<-ctx.Done()
		w.srv.Stop()
	}()
	err = w.srv.Serve(&peerCheckListener{Listener: l, w: w})
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

// peerCheckListener drops connections whose peer process is not allowed.
type peerCheckListener struct {
	net.Listener
	w *WorkloadAPI
}

func (l *peerCheckListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		uid, pid, err := peerCred(c)
		if err == nil && l.w.allowed(uid) {
			return c, nil
		}
		if err != nil {
			l.w.log.Warn("workload API: refused a connection whose peer could not be identified", "error", err)
		} else {
			l.w.log.Warn("workload API: refused a connection from a process of another user",
				"peer_uid", uid, "peer_pid", pid, "allowed_uids", l.w.allowedList())
		}
		c.Close()
	}
}

func (w *WorkloadAPI) allowed(uid int) bool {
	if w.selfUID >= 0 && uid == w.selfUID {
		return true
	}
	return slices.Contains(w.AllowUIDs, uid)
}

func (w *WorkloadAPI) allowedList() []int {
	out := slices.Clone(w.AllowUIDs)
	if w.selfUID >= 0 {
		out = append([]int{w.selfUID}, out...)
	}
	return out
}

// peerCred returns the uid and pid of the process at the other end of a
// unix socket connection.
func peerCred(c net.Conn) (uid, pid int, err error) {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return 0, 0, fmt.Errorf("not a unix socket: %T", c)
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return 0, 0, err
	}
	var cred *syscall.Ucred
	var serr error
	if err := raw.Control(func(fd uintptr) {
		cred, serr = syscall.GetsockoptUcred(int(fd), syscall.SOL_SOCKET, syscall.SO_PEERCRED)
	}); err != nil {
		return 0, 0, err
	}
	if serr != nil {
		return 0, 0, serr
	}
	return int(cred.Uid), int(cred.Pid), nil
}
