package agent

import (
	"context"
	"sync"

	"google.golang.org/grpc"
)

// CertConn is a grpc.ClientConnInterface to the control plane that always
// presents the workload's current certificate. A TLS connection keeps the
// certificate it was made with, so one long-lived grpc.ClientConn would
// keep showing the control plane a certificate that has since been renewed
// away, expired or revoked: after a revocation and recovery the sidecar's
// policy stream was refused ("certificate serial is revoked") forever.
// CertConn dials a new connection for each certificate, when the next call
// or stream starts, and closes the previous one then.
type CertConn struct {
	src  Source
	dial func(ctx context.Context) (*grpc.ClientConn, error)

	mu     sync.Mutex
	conn   *grpc.ClientConn
	serial string
	closed bool
}

// NewCertConn returns a CertConn that dials with dial (a connection whose
// GetClientCertificate presents src's current certificate).
func NewCertConn(src Source, dial func(ctx context.Context) (*grpc.ClientConn, error)) *CertConn {
	return &CertConn{src: src, dial: dial}
}

// Conn returns the connection for the current certificate, dialing it if
// the certificate changed since the last one.
func (c *CertConn) Conn(ctx context.Context) (*grpc.ClientConn, error) {
	serial := ""
	if s := c.src.SVID(); s != nil {
		serial = s.Serial()
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil, grpc.ErrClientConnClosing
	}
	if c.conn != nil && c.serial == serial {
		return c.conn, nil
	}
	conn, err := c.dial(ctx)
	if err != nil {
		return nil, err
	}
	if c.conn != nil {
		c.conn.Close()
	}
	c.conn, c.serial = conn, serial
	return conn, nil
}

// Invoke implements grpc.ClientConnInterface.
func (c *CertConn) Invoke(ctx context.Context, method string, args, reply any, opts ...grpc.CallOption) error {
	conn, err := c.Conn(ctx)
	if err != nil {
		return err
	}
	return conn.Invoke(ctx, method, args, reply, opts...)
}

// NewStream implements grpc.ClientConnInterface.
func (c *CertConn) NewStream(ctx context.Context, desc *grpc.StreamDesc, method string, opts ...grpc.CallOption) (grpc.ClientStream, error) {
	conn, err := c.Conn(ctx)
	if err != nil {
		return nil, err
	}
	return conn.NewStream(ctx, desc, method, opts...)
}

// Close closes the current connection; later calls fail.
func (c *CertConn) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.closed = true
	if c.conn != nil {
		return c.conn.Close()
	}
	return nil
}
