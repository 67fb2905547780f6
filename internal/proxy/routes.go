package proxy

import (
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"

	"github.com/meshauth/meshauth/internal/policy"
)

// route is one service port as the client sidecar sees it: where to send a
// request, how (TLS mode) and which server identities may answer (secure
// naming). Routes are rebuilt when the snapshot changes and are immutable
// except for the round-robin counter.
type route struct {
	service   string // name.namespace
	port      uint32
	mode      policy.ClientTLSMode
	http      bool // HTTP/1.x (policy.InboundProtocol "HTTP")
	h2        bool // HTTP2 or GRPC
	protocol  string
	sni       string
	allowed   []string // SPIFFE IDs allowed to serve (secure naming)
	endpoints []string // host:port of each endpoint (its sidecar's port)
	rr        atomic.Uint32
	// transportKey selects the pooled upstream transport: routes with the
	// same TLS settings share connections.
	transportKey string
}

// next picks an endpoint round-robin; "" if the service has none.
func (r *route) next() string {
	switch len(r.endpoints) {
	case 0:
		return ""
	case 1:
		return r.endpoints[0]
	}
	return r.endpoints[int(r.rr.Add(1))%len(r.endpoints)]
}

// routeTable indexes a snapshot's outbound services by every "host:port" a
// caller may use: service names, the virtual IP, and endpoint addresses.
type routeTable struct {
	snap   *policy.Snapshot
	byHost map[string]hostRoute
}

// hostRoute is a routeTable entry: the route and its key ("host:port",
// canonical), kept so a request that names the route canonically reuses
// the key as its target instead of building the same string again.
type hostRoute struct {
	r   *route
	key string
}

// isHTTPProtocol reports whether a service port is HTTP/1.x, by the same
// rule the server sidecar applies (policy.InboundProtocol).
func isHTTPProtocol(proto, name string) bool {
	return policy.InboundProtocol(proto, name) == "HTTP"
}

func buildRoutes(s *policy.Snapshot) *routeTable {
	t := &routeTable{snap: s, byHost: map[string]hostRoute{}}
	if s == nil {
		return t
	}
	for i := range s.Outbound {
		svc := &s.Outbound[i]
		for _, p := range svc.Ports {
			r := &route{
				service:  svc.Name + "." + svc.Namespace,
				port:     p.Port,
				mode:     p.TLSMode,
				http:     isHTTPProtocol(p.Protocol, p.Name),
				h2:       policy.InboundProtocol(p.Protocol, p.Name) == "HTTP2",
				protocol: p.Protocol,
				sni:      p.SNI,
				allowed:  svc.ServerIdentities,
			}
			if r.mode == "" {
				r.mode = policy.ClientIstioMutual
			}
			if len(p.SubjectAltNames) > 0 {
				r.allowed = p.SubjectAltNames
			}
			target := p.TargetPort
			if target == 0 {
				target = p.Port
			}
			for _, ep := range svc.Endpoints {
				port := target
				if lp, ok := ep.Ports[target]; ok && lp != 0 {
					port = lp
				}
				r.endpoints = append(r.endpoints, net.JoinHostPort(ep.Address, strconv.Itoa(int(port))))
			}
			ids := slices.Clone(r.allowed)
			slices.Sort(ids)
			r.transportKey = string(r.mode) + "|" + r.sni + "|" + strings.Join(ids, ",")
			ps := strconv.Itoa(int(p.Port))
			for _, h := range svc.Hosts {
				t.add(normHost(h)+":"+ps, r, true)
			}
			if svc.Address != "" {
				t.add(net.JoinHostPort(normIP(svc.Address), ps), r, true)
			}
			// A transparent caller may also dial an endpoint directly.
			for _, ep := range svc.Endpoints {
				t.add(net.JoinHostPort(normIP(ep.Address), strconv.Itoa(int(target))), r, false)
			}
		}
	}
	return t
}

// add indexes r under key; replace says whether an entry already there
// gives way.
func (t *routeTable) add(key string, r *route, replace bool) {
	if _, ok := t.byHost[key]; ok && !replace {
		return
	}
	t.byHost[key] = hostRoute{r: r, key: key}
}

// lookup finds the route for host (a name or IP, no port) and port. When
// host is spelled canonically (lower case, no trailing dot; an IP in its
// canonical text), hostport is the table's own "host:port" string for it,
// which is what net.JoinHostPort would build; otherwise "". It allocates
// nothing for a canonical name.
func (t *routeTable) lookup(host string, port uint32) (r *route, hostport string) {
	var kb [128]byte
	k := kb[:0]
	canonical := true
	if mayBeIP(host) {
		// netip parses and prints without allocating; Unmap prints an
		// IPv4-mapped address as net.IP.String does. mayBeIP lets no zone
		// ("%eth0") through.
		if ip, err := netip.ParseAddr(host); err == nil {
			ip = ip.Unmap()
			if ip.Is6() {
				k = append(k, '[')
			}
			start := len(k)
			k = ip.AppendTo(k)
			canonical = string(k[start:]) == host
			if ip.Is6() {
				k = append(k, ']')
			}
			return t.find(k, port, canonical)
		}
	}
	n := normHost(host)
	canonical = n == host
	return t.find(append(k, n...), port, canonical)
}

// find looks up k+":"+port.
func (t *routeTable) find(k []byte, port uint32, canonical bool) (*route, string) {
	k = strconv.AppendUint(append(k, ':'), uint64(port), 10)
	e, ok := t.byHost[string(k)]
	if !ok {
		return nil, ""
	}
	if !canonical {
		return e.r, ""
	}
	return e.r, e.key
}

// mayBeIP reports whether s could be an IP literal: only hex digits,
// dots and colons (anything else and net.ParseIP fails, after allocating
// its error).
func mayBeIP(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F' || c == '.' || c == ':') {
			return false
		}
	}
	return true
}

func normHost(h string) string {
	return strings.ToLower(strings.TrimSuffix(h, "."))
}

// normIP returns the canonical text of an IP, or s unchanged if it is a name.
func normIP(s string) string {
	if ip := net.ParseIP(s); ip != nil {
		return ip.String()
	}
	return normHost(s)
}
