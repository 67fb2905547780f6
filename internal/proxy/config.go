package proxy

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/meshauth/meshauth/internal/identity"
	"github.com/meshauth/meshauth/internal/policy"
)

// ConfigSource gives the proxy its effective configuration. Reads are a
// pointer load per connection; the push client (or a file) replaces the
// snapshot as a whole. Implementations: ConfigStore here; the control
// plane's push client satisfies the same two methods.
type ConfigSource interface {
	// Current returns the snapshot in force, or nil before the first one.
	Current() *policy.Snapshot
	// Changed returns a channel that is closed at the next change.
	Changed() <-chan struct{}
}

// ConfigStore is a ConfigSource that is set by hand (a static file, tests,
// or an adapter around the push stream). A snapshot that fails Validate is
// refused and the last good one stays in force.
type ConfigStore struct {
	cur     atomic.Pointer[policy.Snapshot]
	mu      sync.Mutex
	changed chan struct{}
}

// NewConfigStore returns a store holding s (which may be nil).
func NewConfigStore(s *policy.Snapshot) *ConfigStore {
	c := &ConfigStore{changed: make(chan struct{})}
	if s != nil {
		c.cur.Store(s)
	}
	return c
}

// Current implements ConfigSource.
func (c *ConfigStore) Current() *policy.Snapshot { return c.cur.Load() }

// Changed implements ConfigSource.
func (c *ConfigStore) Changed() <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.changed
}

// Set validates s and makes it current. On error nothing changes.
func (c *ConfigStore) Set(s *policy.Snapshot) error {
	if err := ValidateSnapshot(s); err != nil {
		return err
	}
	c.cur.Store(s)
	c.mu.Lock()
	close(c.changed)
	c.changed = make(chan struct{})
	c.mu.Unlock()
	return nil
}

// LoadSnapshotFile reads a JSON-encoded policy.Snapshot (the same encoding
// the push stream carries) and validates it.
func LoadSnapshotFile(path string) (*policy.Snapshot, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("proxy: read snapshot: %w", err)
	}
	return ParseSnapshot(data, path)
}

// ParseSnapshot decodes and validates a JSON snapshot; name is used in errors.
func ParseSnapshot(data []byte, name string) (*policy.Snapshot, error) {
	dec := json.NewDecoder(strings.NewReader(string(data)))
	dec.DisallowUnknownFields()
	var s policy.Snapshot
	if err := dec.Decode(&s); err != nil {
		return nil, fmt.Errorf("proxy: %s: decode snapshot JSON: %w (the file must hold one policy.Snapshot object)", name, err)
	}
	if err := ValidateSnapshot(&s); err != nil {
		return nil, fmt.Errorf("proxy: %s: %w", name, err)
	}
	return &s, nil
}

// ValidateSnapshot checks what the proxy relies on: known modes, ports in
// range, parseable server identities and addresses.
func ValidateSnapshot(s *policy.Snapshot) error {
	if s == nil {
		return errors.New("snapshot is empty")
	}
	var errs []error
	if s.InboundDefault != "" && !validServerMode(s.InboundDefault) {
		errs = append(errs, fmt.Errorf("inboundDefault: unknown mode %q (want STRICT, PERMISSIVE or DISABLE)", s.InboundDefault))
	}
	for i, p := range s.Inbound {
		if p.Port == 0 || p.Port > 65535 {
			errs = append(errs, fmt.Errorf("inbound[%d]: port %d out of range", i, p.Port))
		}
		if !validServerMode(p.Mode) {
			errs = append(errs, fmt.Errorf("inbound[%d] (port %d): unknown mode %q (want STRICT, PERMISSIVE or DISABLE)", i, p.Port, p.Mode))
		}
	}
	for i, svc := range s.Outbound {
		where := fmt.Sprintf("outbound[%d] (%s.%s)", i, svc.Name, svc.Namespace)
		if svc.Address != "" && net.ParseIP(svc.Address) == nil {
			errs = append(errs, fmt.Errorf("%s: address %q is not an IP", where, svc.Address))
		}
		for j, p := range svc.Ports {
			if p.Port == 0 || p.Port > 65535 {
				errs = append(errs, fmt.Errorf("%s: ports[%d]: port %d out of range", where, j, p.Port))
			}
			switch p.TLSMode {
			case policy.ClientDisable, policy.ClientIstioMutual, "":
			case policy.ClientSimple, policy.ClientMutual:
				errs = append(errs, fmt.Errorf("%s: ports[%d]: tls mode %s needs user certificates, which the sidecar does not support yet; use ISTIO_MUTUAL or DISABLE", where, j, p.TLSMode))
			default:
				errs = append(errs, fmt.Errorf("%s: ports[%d]: unknown tls mode %q", where, j, p.TLSMode))
			}
			for _, san := range p.SubjectAltNames {
				if _, err := identity.Parse(san); err != nil {
					errs = append(errs, fmt.Errorf("%s: ports[%d]: subjectAltNames: %w", where, j, err))
				}
			}
		}
		for _, id := range svc.ServerIdentities {
			if _, err := identity.Parse(id); err != nil {
				errs = append(errs, fmt.Errorf("%s: serverIdentities: %w", where, err))
			}
		}
		for j, ep := range svc.Endpoints {
			if ep.Address == "" {
				errs = append(errs, fmt.Errorf("%s: endpoints[%d]: empty address", where, j))
			}
		}
	}
	return errors.Join(errs...)
}

func validServerMode(m policy.ServerMode) bool {
	switch m {
	case policy.ServerStrict, policy.ServerPermissive, policy.ServerDisable:
		return true
	}
	return false
}

// inboundPort returns the settings for a workload port. With no snapshot or
// no default the sidecar is STRICT: a peer it cannot verify is never let in.
func inboundPort(s *policy.Snapshot, port uint32) policy.InboundPort {
	if s != nil {
		for _, p := range s.Inbound {
			if p.Port == port {
				return p
			}
		}
		if s.InboundDefault != "" {
			return policy.InboundPort{Port: port, Mode: s.InboundDefault, DecidedBy: "inboundDefault"}
		}
	}
	return policy.InboundPort{Port: port, Mode: policy.ServerStrict, DecidedBy: "sidecar default"}
}
