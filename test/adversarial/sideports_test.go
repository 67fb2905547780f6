package adversarial

import (
	"bufio"
	"fmt"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/meshauth/meshauth/internal/localmesh"
)

// The sidecar's own HTTP endpoints (admin; health and Prometheus, which
// listen on every address in a pod) do not let a client keep connections
// open for free: a keep-alive connection quiet after its request is closed
// at the sidecar's --idle-timeout, as on the proxy's listeners. Before, they
// had no idle limit at all, so idle connections to :15090 from anywhere in
// the cluster piled up for as long as the clients liked.
func TestSidePortsCloseIdleConnections(t *testing.T) {
	port, err := localmesh.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	prom := fmt.Sprintf("127.0.0.1:%d", port)
	m := startMesh(t, meshOptions{NoSleep: true, HttpbinArgs: []string{"--idle-timeout", "1s", "--prometheus", prom}})
	for _, addr := range []string{prom, m.Httpbin.AdminAddr} {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		fmt.Fprintf(c, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
		br := bufio.NewReader(c)
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("%s: %v", addr, err)
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("%s: /metrics answered %s", addr, resp.Status)
		}
		// Now quiet: the server must close within a few idle timeouts.
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := br.ReadByte(); err == nil {
			t.Fatalf("%s: the server sent bytes to a quiet keep-alive client", addr)
		} else if ne, ok := err.(net.Error); ok && ne.Timeout() {
			t.Fatalf("%s: a quiet keep-alive connection is still open 10s after a 1s idle timeout", addr)
		}
	}
}
