package capture

import (
	"net/netip"
	"strings"
	"testing"
)

// TestRules checks the generated iptables-restore input: the proxy's uid and
// gid and loopback are excluded before the redirect, port lists are honoured,
// and each family gets only its own CIDRs. (Installing the rules needs root
// and a network namespace: cmd/meshd's TestInitNetCapture does it.)
func TestRules(t *testing.T) {
	cases := []struct {
		name    string
		cfg     Config
		v6      bool
		want    []string // in this order
		notWant []string
	}{
		{
			name: "defaults",
			want: []string{
				"-A MESHAUTH_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006",
				"-A MESHAUTH_REDIRECT -p tcp -j REDIRECT --to-ports 15001",
				"-A PREROUTING -p tcp -j MESHAUTH_INBOUND",
				"-A MESHAUTH_INBOUND -p tcp -j MESHAUTH_IN_REDIRECT",
				"-A OUTPUT -p tcp -j MESHAUTH_OUTPUT",
				"-A MESHAUTH_OUTPUT -m owner --uid-owner 1337 -j RETURN",
				"-A MESHAUTH_OUTPUT -m owner --gid-owner 1337 -j RETURN",
				"-A MESHAUTH_OUTPUT -d 127.0.0.1/32 -j RETURN",
				"-A MESHAUTH_OUTPUT -j MESHAUTH_REDIRECT",
				"COMMIT",
			},
		},
		{
			name: "IPv6 loopback",
			v6:   true,
			want: []string{"-A MESHAUTH_OUTPUT -d ::1/128 -j RETURN"},
		},
		{
			name: "port lists and CIDRs",
			cfg: Config{
				ProxyUID: 2000, ProxyGID: 2001, InboundPorts: []uint16{80, 8080}, ExcludeInboundPorts: []uint16{22},
				ExcludeOutboundPorts: []uint16{15012}, IncludeOutboundPorts: []uint16{8000},
				ExcludeOutboundCIDRs: []netip.Prefix{netip.MustParsePrefix("10.96.0.0/12"), netip.MustParsePrefix("fd00::/8")},
			},
			want: []string{
				"-A MESHAUTH_INBOUND -p tcp --dport 22 -j RETURN",
				"-A MESHAUTH_INBOUND -p tcp --dport 80 -j MESHAUTH_IN_REDIRECT",
				"-A MESHAUTH_INBOUND -p tcp --dport 8080 -j MESHAUTH_IN_REDIRECT",
				"-A MESHAUTH_OUTPUT -m owner --uid-owner 2000 -j RETURN",
				"-A MESHAUTH_OUTPUT -m owner --gid-owner 2001 -j RETURN",
				"-A MESHAUTH_OUTPUT -p tcp --dport 15012 -j RETURN",
				"-A MESHAUTH_OUTPUT -d 10.96.0.0/12 -j RETURN",
				"-A MESHAUTH_OUTPUT -p tcp --dport 8000 -j MESHAUTH_REDIRECT",
			},
			notWant: []string{"fd00::/8", "-A MESHAUTH_INBOUND -p tcp -j MESHAUTH_IN_REDIRECT", "-A MESHAUTH_OUTPUT -j MESHAUTH_REDIRECT"},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got := Rules(tc.cfg, tc.v6)
			pos := 0
			for _, w := range tc.want {
				i := strings.Index(got[pos:], w+"\n")
				if i < 0 {
					t.Fatalf("missing (or out of order) %q in:\n%s", w, got)
				}
				pos += i + len(w)
			}
			for _, nw := range tc.notWant {
				if strings.Contains(got, nw) {
					t.Errorf("unexpected %q in:\n%s", nw, got)
				}
			}
		})
	}
}

func TestParsePorts(t *testing.T) {
	for _, tc := range []struct {
		in      string
		want    []uint16
		wantErr bool
	}{
		{"", nil, false}, {"*", nil, false}, {"80, 8080", []uint16{80, 8080}, false},
		{"0", nil, true}, {"65536", nil, true}, {"http", nil, true},
	} {
		t.Run(tc.in, func(t *testing.T) {
			got, err := ParsePorts(tc.in)
			if (err != nil) != tc.wantErr || len(got) != len(tc.want) {
				t.Fatalf("ParsePorts(%q) = %v, %v", tc.in, got, err)
			}
			for i := range got {
				if got[i] != tc.want[i] {
					t.Fatalf("ParsePorts(%q) = %v", tc.in, got)
				}
			}
		})
	}
}

// FuzzParsePorts: the port-list parser never panics and only returns ports
// in 1-65535.
func FuzzParsePorts(f *testing.F) {
	f.Add("80,8080")
	f.Add("*")
	f.Add(" 1 , 65535 ")
	f.Fuzz(func(t *testing.T, s string) {
		ps, err := ParsePorts(s)
		if err != nil {
			return
		}
		for _, p := range ps {
			if p == 0 {
				t.Fatalf("ParsePorts(%q) returned port 0", s)
			}
		}
	})
}
