package proxy

import (
	"crypto/tls"
	"io"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meshauth/meshauth/internal/ca/catest"
	"github.com/meshauth/meshauth/internal/identity"
	"github.com/meshauth/meshauth/internal/policy"
)

// TestRotationUnderLoad: about 1,000 requests/s flow through a client and a
// server sidecar while both certificates rotate 60 times, and the pooled
// upstream connections are dropped at every rotation so new handshakes use
// the new certificates. Not one request may fail. The test is bounded by the
// number of rotations, not by a time measurement.
func TestRotationUnderLoad(t *testing.T) {
	if testing.Short() {
		t.Skip("load test")
	}
	ca := catest.New(t)
	srv := startServer(t, ca, httpbinID, policy.ServerStrict, sidecarOpts{})
	cli := startSidecar(t, ca, sleepID, sidecarOpts{outbound: true, snap: &policy.Snapshot{
		TrustDomain: "cluster.local",
		Outbound:    []policy.OutboundService{httpbinService(t, srv.InboundAddrs[0].String(), policy.ClientIstioMutual, httpbinID)},
	}})

	const (
		workers   = 25
		perWorker = 40 // requests/s each: ~1,000/s in all
		rotations = 60
	)
	var (
		ok, failed atomic.Int64
		firstErr   atomic.Value
		stop       = make(chan struct{})
		wg         sync.WaitGroup
	)
	for w := 0; w < workers; w++ {
		// Half the clients keep their connection, half open one per request.
		c := proxyClient(cli, w%2 == 0)
		wg.Add(1)
		go func() {
			defer wg.Done()
			tick := time.NewTicker(time.Second / perWorker)
			defer tick.Stop()
			for {
				select {
				case <-stop:
					return
				case <-tick.C:
				}
				resp, err := c.Get("http://httpbin:8000/headers")
				if err == nil {
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					if resp.StatusCode != 200 {
						err = &statusErr{resp.StatusCode, resp.Header.Get(reasonHeader)}
					}
				}
				if err != nil {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, err)
					continue
				}
				ok.Add(1)
			}
		}()
	}
	var last *catest.Cert
	for i := 0; i < rotations; i++ {
		time.Sleep(25 * time.Millisecond)
		c := ca.Issue(t, sleepID)
		s := ca.Issue(t, httpbinID)
		if err := cli.store.SetSVID(mustSVID(t, c)); err != nil {
			t.Fatal(err)
		}
		if err := srv.store.SetSVID(mustSVID(t, s)); err != nil {
			t.Fatal(err)
		}
		last = s
		cli.pool.closeIdle()
	}
	close(stop)
	wg.Wait()
	t.Logf("%d requests, %d failed, %d rotations, %v outbound handshakes", ok.Load(), failed.Load(), rotations,
		counterValue(t, cli.m.Handshakes.WithLabelValues("outbound", "ok", "mtls")))
	if n := failed.Load(); n != 0 {
		t.Fatalf("%d requests failed during rotation; first: %v", n, firstErr.Load())
	}
	if ok.Load() < rotations {
		t.Fatalf("only %d requests completed", ok.Load())
	}
	// A new connection now gets the last certificate.
	conn, err := tls.Dial("tcp", srv.InboundAddrs[0].String(), &tls.Config{InsecureSkipVerify: true,
		Certificates: []tls.Certificate{ca.Issue(t, sleepID).TLS}})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if got := identity.SerialHex(conn.ConnectionState().PeerCertificates[0]); got != last.Serial() {
		t.Errorf("server presents serial %s, want the last rotated %s", got, last.Serial())
	}
}

type statusErr struct {
	code   int
	reason string
}

func (e *statusErr) Error() string { return http.StatusText(e.code) + " (" + e.reason + ")" }
