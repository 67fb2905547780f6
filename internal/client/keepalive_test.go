package client_test

import (
	"context"
	"crypto/tls"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	pb "github.com/meshauth/meshauth/api/meshauth/v1"
	"github.com/meshauth/meshauth/internal/ca/catest"
	"github.com/meshauth/meshauth/internal/client"
	"github.com/meshauth/meshauth/internal/identity"
)

// watchServer answers WatchTrustBundle with one bundle and then holds the
// stream open, as the control plane does between bundle changes.
type watchServer struct {
	pb.UnimplementedCertificateAuthorityServer
}

func (watchServer) WatchTrustBundle(_ *pb.GetTrustBundleRequest, st grpc.ServerStreamingServer[pb.TrustBundle]) error {
	if err := st.Send(&pb.TrustBundle{Version: 1}); err != nil {
		return err
	}
	<-st.Context().Done()
	return nil
}

// cutProxy relays TCP between a client and a server until cut: then it
// closes the server's side (the server forgets the connection) and stops
// relaying without closing the client's side, so no FIN or RST ever
// reaches the client — what a partition does while the far end goes away.
type cutProxy struct {
	lis      net.Listener
	mu       sync.Mutex
	cut      bool
	upstream []net.Conn
}

func newCutProxy(t *testing.T, target string) *cutProxy {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &cutProxy{lis: l}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			t.Cleanup(func() { c.Close() })
			u, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			p.mu.Lock()
			p.upstream = append(p.upstream, u)
			p.mu.Unlock()
			go io.Copy(u, c)
			go func() {
				// Server to client, until the cut; the client's socket
				// stays open afterwards, its data read and dropped.
				io.Copy(c, u)
				go io.Copy(io.Discard, c)
			}()
		}
	}()
	return p
}

func (p *cutProxy) cutAll() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cut = true
	for _, u := range p.upstream {
		u.Close()
	}
}

// TestStreamEndsWhenConnectionDiesSilently (issue #17, found by the chaos
// suite): a stream that only receives (the trust bundle, with its
// revocations; Discovery) must end when its connection is dead even if no
// FIN or RST ever arrives, so the caller redials. Without keepalive the
// sidecars stayed on dead connections after a partition for good. First the
// stream is held open for over two keepalive intervals (the control plane's
// options must not answer the pings with GOAWAY "too_many_pings"), then
// the connection dies silently and Recv must fail. 60 s is the bound that
// means "never"; no timing is asserted.
func TestStreamEndsWhenConnectionDiesSilently(t *testing.T) {
	if testing.Short() {
		t.Skip("holds a stream for over 20 s")
	}
	a := catest.New(t)
	srvCert := a.Issue(t, "spiffe://cluster.local/ns/meshauth-system/sa/meshd")
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(append(client.ServerKeepalive(), grpc.Creds(credentials.NewTLS(&tls.Config{Certificates: []tls.Certificate{srvCert.TLS}, MinVersion: tls.VersionTLS13})))...)
	pb.RegisterCertificateAuthorityServer(srv, watchServer{})
	go srv.Serve(lis)
	t.Cleanup(srv.Stop)
	proxy := newCutProxy(t, lis.Addr().String())

	conn, err := client.Dial(context.Background(), client.Options{Addr: proxy.lis.Addr().String(), Roots: func() *identity.Bundle { return a.Bundle() }})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	st, err := pb.NewCertificateAuthorityClient(conn).WatchTrustBundle(context.Background(), &pb.GetTrustBundleRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.Recv(); err != nil {
		t.Fatalf("first bundle: %v", err)
	}
	ended := make(chan error, 1)
	go func() {
		_, err := st.Recv()
		ended <- err
	}()
	hold := 2*client.Keepalive.Time + client.Keepalive.Timeout
	select {
	case err := <-ended:
		t.Fatalf("the stream ended while the connection was healthy (keepalive pings refused?): %v", err)
	case <-time.After(hold):
	}
	proxy.cutAll()
	cut := time.Now()
	select {
	case err := <-ended:
		t.Logf("the stream ended %s after its connection died silently: %v", time.Since(cut).Round(time.Millisecond), err)
	case <-time.After(60 * time.Second):
		t.Fatal("the stream still waits on a dead connection 60 s after it died: no keepalive")
	}
}
