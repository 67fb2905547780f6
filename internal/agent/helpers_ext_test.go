package agent_test

import (
	"net"
	"net/url"
	"strconv"
	"testing"

	"github.com/meshauth/meshauth/internal/agent"
	"github.com/meshauth/meshauth/internal/policy"
	"github.com/meshauth/meshauth/internal/proxy"
)

func listen(t *testing.T) net.Listener {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func newProxy(t *testing.T, src agent.Source, snap *policy.Snapshot, cfg proxy.Config) *proxy.Proxy {
	t.Helper()
	cfg.Certs = src
	cfg.Policy = proxy.NewConfigStore(snap)
	p, err := proxy.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

func portOf(addr string) uint32 {
	_, ps, _ := net.SplitHostPort(addr)
	n, _ := strconv.Atoi(ps)
	return uint32(n)
}

func mustURL(s string) *url.URL {
	u, err := url.Parse(s)
	if err != nil {
		panic(err)
	}
	return u
}
