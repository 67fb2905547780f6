package cli

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/meshauth/meshauth/internal/proxy"
)

// TestConfigFromFlags: the command line the injector and localmesh write
// becomes the sidecar.Config they mean.
func TestConfigFromFlags(t *testing.T) {
	t.Setenv("POD_NAME", "httpbin-7f9")
	t.Setenv("POD_NAMESPACE", "shop")
	var f flags
	fl, err := parse("meshd sidecar", []string{
		"-s", "httpbin", "--inbound", "18000=127.0.0.1:8000", "--inbound", "10.0.0.1:18001=127.0.0.1:8001",
		"--upstream", "13306=mysql:3306", "--inbound-port", "15006", "--outbound-port", "15001", "--admin-port", "15000",
		"--request-headers-timeout", "0", "--max-connections", "0", "--cert-source", "files",
		"--", "app", "--its-own-flag"}, &f)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := config(f, fl.Args())
	if err != nil {
		t.Fatal(err)
	}
	want := []proxy.InboundListener{{Listen: ":18000", App: "127.0.0.1:8000"}, {Listen: "10.0.0.1:18001", App: "127.0.0.1:8001"}}
	if len(cfg.Inbound) != 2 || cfg.Inbound[0] != want[0] || cfg.Inbound[1] != want[1] {
		t.Errorf("inbound %+v", cfg.Inbound)
	}
	if len(cfg.Upstreams) != 1 || cfg.Upstreams[0] != (proxy.Upstream{Listen: "127.0.0.1:13306", Service: "mysql:3306"}) {
		t.Errorf("upstreams %+v", cfg.Upstreams)
	}
	switch {
	case cfg.Workload != "httpbin-7f9" || cfg.Namespace != "shop" || cfg.ServiceAccount != "httpbin":
		t.Errorf("identity from env and flags: %q %q %q", cfg.Workload, cfg.Namespace, cfg.ServiceAccount)
	case !cfg.Transparent || cfg.InboundCapture != ":15006" || cfg.Outbound != ":15001" || cfg.Admin != "127.0.0.1:15000":
		t.Errorf("port flags: %+v", cfg)
	case cfg.RequestHeadersTimeout != -1 || cfg.MaxConnections != -1 || cfg.ResponseHeadersTimeout != proxy.DefaultResponseHeadersTimeout:
		t.Errorf("0 means off, unset means the default: %v %v %v", cfg.RequestHeadersTimeout, cfg.MaxConnections, cfg.ResponseHeadersTimeout)
	case !cfg.StaticCerts:
		t.Error("--cert-source files did not select the certificates directory")
	case strings.Join(cfg.App, " ") != "app --its-own-flag":
		t.Errorf("app %q", cfg.App)
	}

	// An explicit flag wins over the injector's environment.
	var g flags
	if _, err := parse("x", []string{"--workload", "mine"}, &g); err != nil || g.workload != "mine" {
		t.Errorf("--workload with POD_NAME set: %q %v", g.workload, err)
	}
}

func TestBadCommandLines(t *testing.T) {
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--no-such-flag"}, "unknown flag: --no-such-flag"},
		{[]string{"--cert-source", "vault"}, `--cert-source "vault": want ca or files`},
		{[]string{"--idle-timeout", "soon"}, "invalid argument"},
	} {
		if err := Parse(c.args); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("Parse(%q) = %v, want %q", c.args, err, c.want)
		}
	}
	for _, s := range []string{"18000", "=127.0.0.1:8000", "18000="} {
		var f flags
		if _, err := parse("x", []string{"--inbound", s}, &f); err != nil {
			t.Fatal(err)
		}
		if _, err := config(f, nil); err == nil || !strings.Contains(err.Error(), "--inbound") {
			t.Errorf("--inbound %q: %v", s, err)
		}
	}
	var f flags
	parse("x", []string{"--upstream", "13306"}, &f)
	if _, err := config(f, nil); err == nil || !strings.Contains(err.Error(), "want LISTEN=SERVICE:PORT") {
		t.Errorf("--upstream without a service: %v", err)
	}
}

// TestHelp: -h prints the help with the flags under the name the user typed,
// and runs nothing.
func TestHelp(t *testing.T) {
	var out bytes.Buffer
	if err := Main("meshd-sidecar", []string{"--help"}, &out); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"mesh identity and mutual TLS", "meshd-sidecar [flags] [-- app command...]", "  meshd-sidecar --control 127.0.0.1:15012", "--certs-dir string", "--idle-timeout duration"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("help lacks %q:\n%s", want, out.String())
		}
	}
	if offIfZero(time.Duration(0)) != -1 || offIfZero(3*time.Second) != 3*time.Second {
		t.Error("offIfZero")
	}
}
