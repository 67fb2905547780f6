package proxy

import (
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"

	"github.com/meshauth/meshauth/internal/ca/catest"
	"github.com/meshauth/meshauth/internal/policy"
)

// TestOutboundUIDs: with OutboundUIDs set, the explicit proxy serves only
// local processes of those uids, found through /proc/net/tcp. In process
// (this test's uid allowed or not), and, as root, with real curl processes
// of other users (setpriv).
func TestOutboundUIDs(t *testing.T) {
	ca := catest.New(t)
	srv := startServer(t, ca, httpbinID, policy.ServerStrict, sidecarOpts{})
	snap := &policy.Snapshot{TrustDomain: "cluster.local",
		Outbound: []policy.OutboundService{httpbinService(t, srv.InboundAddrs[0].String(), policy.ClientIstioMutual, httpbinID)}}
	get := func(t *testing.T, cli *sidecar) int {
		resp, err := proxyClient(cli, false).Get("http://httpbin:8000/headers")
		if err != nil {
			return 0
		}
		resp.Body.Close()
		return resp.StatusCode
	}

	t.Run("own uid allowed", func(t *testing.T) {
		cli := startSidecar(t, ca, sleepID, sidecarOpts{outbound: true, snap: snap, outboundUIDs: []int{os.Getuid()}})
		if code := get(t, cli); code != 200 {
			t.Fatalf("allowed uid got %d", code)
		}
	})
	t.Run("uid not allowed", func(t *testing.T) {
		cli := startSidecar(t, ca, sleepID, sidecarOpts{outbound: true, snap: snap, outboundUIDs: []int{4242}})
		if code := get(t, cli); code != 0 {
			t.Fatalf("a process of uid %d not in the list got HTTP %d", os.Getuid(), code)
		}
		if n := counterValue(t, cli.m.Closed.WithLabelValues("outbound", "peer_uid_not_allowed")); n != 1 {
			t.Errorf("refusals counted %v, want 1", n)
		}
		if !strings.Contains(cli.log.String(), `"peer_uid":`+strconv.Itoa(os.Getuid())) {
			t.Errorf("refusal not logged with the peer's uid:\n%s", cli.log.String())
		}
	})
	t.Run("other users, for real", func(t *testing.T) {
		if os.Getuid() != 0 {
			t.Skip("needs root to run curl as another uid (setpriv); CI runs as root")
		}
		setpriv, err1 := exec.LookPath("setpriv")
		curl, err2 := exec.LookPath("curl")
		if err1 != nil || err2 != nil {
			t.Skip("needs setpriv and curl")
		}
		cli := startSidecar(t, ca, sleepID, sidecarOpts{outbound: true, snap: snap, outboundUIDs: []int{0, 1337}})
		run := func(uid string) string {
			out, _ := exec.Command(setpriv, "--reuid", uid, "--regid", uid, "--clear-groups", curl, "-s", "-o", "/dev/null", "-w", "%{http_code}",
				"-x", "http://"+cli.OutboundAddr.String(), "http://httpbin:8000/headers").Output()
			return string(out)
		}
		if got := run("1337"); got != "200" {
			t.Errorf("curl as allowed uid 1337: %q, want 200", got)
		}
		if got := run("1338"); got != "000" {
			t.Errorf("curl as uid 1338 (not allowed): %q, want 000", got)
		}
	})
}

// FuzzProcLine: any /proc/net/tcp line is read without panicking; a match
// has a non-negative uid and the addresses asked for.
func FuzzProcLine(f *testing.F) {
	const local, remote = "0100007F:A4BA", "0100007F:63A6"
	f.Add("   0: 0100007F:A4BA 0100007F:63A6 01 00000000:00000000 00:00000000 00000000  1337        0 123456 1 0000000000000000 20 4 30 10 -1")
	f.Add("   0: 0100007F:A4BA 0100007F:63A6 01 x x x -5")
	f.Add("")
	f.Fuzz(func(t *testing.T, line string) {
		uid, ok, err := matchProcLine(line, local, remote)
		if ok && (err != nil || uid < 0) {
			t.Fatalf("match with uid %d, err %v", uid, err)
		}
		if ok {
			fs := strings.Fields(line)
			if !strings.EqualFold(fs[1], local) || !strings.EqualFold(fs[2], remote) {
				t.Fatalf("matched other addresses: %q", line)
			}
		}
	})
}

// TestProcAddr: the /proc/net/tcp{,6} address encoding, against lines
// this kernel writes for 127.0.0.1:8080 and [::1]:443.
func TestProcAddr(t *testing.T) {
	for _, tc := range []struct {
		ap   string
		v6   bool
		want string
	}{
		{"127.0.0.1:8080", false, "0100007F:1F90"},
		{"127.0.0.1:8080", true, "0000000000000000FFFF00000100007F:1F90"},
		{"[::1]:443", true, "00000000000000000000000001000000:01BB"},
		{"[::1]:443", false, ""},
	} {
		if got := procAddr(netip.MustParseAddrPort(tc.ap), tc.v6); got != tc.want {
			t.Errorf("procAddr(%s, v6=%v) = %q, want %q", tc.ap, tc.v6, got, tc.want)
		}
	}
}
