package main

import (
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"runtime"
	"sync"
	"sync/atomic"
	"time"
)

// The raw limits say how far the machine itself goes, so the proxies'
// figures can be read against them: bytes over a loopback socket, bytes
// through Go's TLS, and full mTLS handshakes in one process on all cores.

// rawLoopback copies size bytes over a loopback TCP connection (MiB/s).
func rawLoopback(size int64) (float64, error) {
	return bulk(size, nil, nil)
}

// rawTLS copies size bytes over TLS 1.3 with mutual authentication (MiB/s).
func rawTLS(p *pki, size int64) (float64, error) {
	srv, cli := tlsPair(p)
	return bulk(size, srv, cli)
}

// tlsPair returns server and client configs for a full mTLS handshake with
// the bench PKI (no session resumption, so every handshake is full).
func tlsPair(p *pki) (*tls.Config, *tls.Config) {
	srv := &tls.Config{
		Certificates:           []tls.Certificate{p.Server.TLS},
		ClientAuth:             tls.RequireAndVerifyClientCert,
		ClientCAs:              p.pool,
		MinVersion:             tls.VersionTLS13,
		SessionTicketsDisabled: true,
	}
	cli := &tls.Config{
		Certificates: []tls.Certificate{p.Client.TLS},
		RootCAs:      p.pool,
		ServerName:   serverName,
		MinVersion:   tls.VersionTLS13,
	}
	return srv, cli
}

func bulk(size int64, srv, cli *tls.Config) (float64, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	got := make(chan error, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			got <- err
			return
		}
		defer c.Close()
		var r io.Reader = c
		if srv != nil {
			r = tls.Server(c, srv)
		}
		n, err := io.CopyBuffer(io.Discard, r, make([]byte, 256<<10))
		if err == nil && n != size {
			err = fmt.Errorf("received %d of %d bytes", n, size)
		}
		got <- err
	}()
	c, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		return 0, err
	}
	var w io.WriteCloser = c
	if cli != nil {
		tc := tls.Client(c, cli)
		if err := tc.Handshake(); err != nil {
			c.Close()
			return 0, err
		}
		w = tc
	}
	buf := make([]byte, 256<<10)
	start := time.Now()
	for left := size; left > 0; {
		n := int64(len(buf))
		if left < n {
			n = left
		}
		if _, err := w.Write(buf[:n]); err != nil {
			c.Close()
			return 0, err
		}
		left -= n
	}
	w.Close()
	if err := <-got; err != nil {
		return 0, err
	}
	return float64(size) / (1 << 20) / time.Since(start).Seconds(), nil
}

// rawHandshakes runs full TLS 1.3 mTLS handshakes over loopback, client and
// server in this process, on all cores for d, and returns handshakes/s.
func rawHandshakes(p *pki, d time.Duration) (float64, error) {
	srvCfg, cliCfg := tlsPair(p)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				tc := tls.Server(c, srvCfg)
				c.SetDeadline(time.Now().Add(5 * time.Second))
				if tc.Handshake() == nil {
					tc.Write([]byte{1}) // the client waits for this byte
				}
			}()
		}
	}()
	var n atomic.Int64
	var errMu sync.Mutex
	var firstErr error
	fail := func(err error) {
		errMu.Lock()
		if firstErr == nil {
			firstErr = err
		}
		errMu.Unlock()
	}
	deadline := time.Now().Add(d)
	var wg sync.WaitGroup
	start := time.Now()
	for i := 0; i < 2*runtime.GOMAXPROCS(0); i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			one := make([]byte, 1)
			for time.Now().Before(deadline) {
				c, err := net.Dial("tcp", l.Addr().String())
				if err != nil {
					fail(err)
					return
				}
				tc := tls.Client(c, cliCfg)
				c.SetDeadline(time.Now().Add(5 * time.Second))
				// Reading the server's byte means the server has verified us too.
				if _, err := io.ReadFull(tc, one); err != nil {
					c.Close()
					fail(err)
					return
				}
				c.Close()
				n.Add(1)
			}
		}()
	}
	wg.Wait()
	if firstErr != nil {
		return 0, fmt.Errorf("handshake: %w", firstErr)
	}
	return float64(n.Load()) / time.Since(start).Seconds(), nil
}
