package proxy

import (
	"net"
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
	byHost map[string]*route
}

// isHTTPProtocol reports whether a service port is HTTP/1.x, by the same
// rule the server sidecar applies (policy.InboundProtocol).
func isHTTPProtocol(proto, name string) bool {
	return policy.InboundProtocol(proto, name) == "HTTP"
}

func buildRoutes(s *policy.Snapshot) *routeTable {
	t := &routeTable{snap: s, byHost: map[string]*route{}}
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
				t.byHost[normHost(h)+":"+ps] = r
			}
			if svc.Address != "" {
				t.byHost[net.JoinHostPort(normIP(svc.Address), ps)] = r
			}
			// A transparent caller may also dial an endpoint directly.
			for _, ep := range svc.Endpoints {
				k := net.JoinHostPort(normIP(ep.Address), strconv.Itoa(int(target)))
				if _, ok := t.byHost[k]; !ok {
					t.byHost[k] = r
				}
			}
		}
	}
	return t
}

// lookup finds the route for host (a name or IP, no port) and port.
func (t *routeTable) lookup(host string, port uint32) *route {
	if ip := net.ParseIP(host); ip != nil {
		return t.byHost[net.JoinHostPort(ip.String(), strconv.Itoa(int(port)))]
	}
	return t.byHost[normHost(host)+":"+strconv.Itoa(int(port))]
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
