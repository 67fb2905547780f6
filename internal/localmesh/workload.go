package localmesh

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// WorkloadSpec describes one workload: an app and its sidecar.
type WorkloadSpec struct {
	Name, Namespace, ServiceAccount string
	// Service, if set, is the service the workload serves and ServicePort
	// its port (the seed's httpbin: 8000 in front of the app's port).
	Service     string
	ServicePort int
	// App is the app's command line; "{{port}}" in it is replaced with the
	// app's port (a free loopback port).
	App []string
}

// Workload is a running app + sidecar.
type Workload struct {
	Spec WorkloadSpec
	// CertsDir is where the sidecar's agent writes cert-chain.pem, key.pem
	// and root-cert.pem (the seed's /etc/certs).
	CertsDir string
	// AppAddr is where the app listens (loopback; only its sidecar should
	// call it).
	AppAddr string
	// InboundAddr is the sidecar's inbound listener for the app's port:
	// where mesh traffic (and anything addressed to the service) arrives.
	InboundAddr string
	// OutboundProxy is the sidecar's HTTP proxy URL, the app's http_proxy.
	OutboundProxy string
	// AdminAddr is the sidecar's admin endpoint.
	AdminAddr string
	Proc      *Proc
}

// Summary is a one-line description for progress output.
func (w *Workload) Summary() string {
	var parts []string
	if w.InboundAddr != "" {
		parts = append(parts, "inbound "+w.InboundAddr)
	}
	if w.OutboundProxy != "" {
		parts = append(parts, "http_proxy "+w.OutboundProxy)
	}
	return strings.Join(parts, ", ")
}

// StartWorkload creates a join token for the workload's identity, then
// starts its sidecar with the app as the sidecar's child, and waits until
// the certificates are written and the listeners accept connections.
func (m *Mesh) StartWorkload(ctx context.Context, spec WorkloadSpec) (*Workload, error) {
	return nil, fmt.Errorf("localmesh: starting a sidecar is not wired yet (meshd sidecar has not landed)")
}

var (
	_ = os.Stat
	_ = filepath.Join
	_ = strconv.Itoa
)
