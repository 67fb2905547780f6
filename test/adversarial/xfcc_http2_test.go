package adversarial

import (
	"context"
	"encoding/json"
	"net"
	"net/http"
	"net/textproto"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/h2c"

	"github.com/meshauth/meshauth/internal/localmesh"
)

// tcpForwarder is a tiny python3 app: it listens on argv[1] (a port) and
// forwards every connection to argv[2] (host:port). It lets a workload's
// app port (chosen by localmesh) reach an HTTP/2 server in this test.
const tcpForwarder = `
import asyncio, sys
host, port = sys.argv[2].rsplit(":", 1)
async def pipe(r, w):
    try:
        while True:
            b = await r.read(65536)
            if not b:
                break
            w.write(b)
            await w.drain()
    finally:
        w.close()
async def handle(r, w):
    ur, uw = await asyncio.open_connection(host, int(port))
    await asyncio.gather(pipe(r, uw), pipe(ur, w))
async def main():
    srv = await asyncio.start_server(handle, "127.0.0.1", int(sys.argv[1]))
    async with srv:
        await srv.serve_forever()
asyncio.run(main())
`

// TestForgedXFCCOverHTTP2 (issue #11 finding 1, HTTP/2; issue #14): on a
// port declared GRPC, HTTP/2 was relayed, and the app used to receive
// whatever X-Forwarded-Client-Cert the caller put in its header block (then
// an HPACK guard closed such connections). Now the server sidecar
// terminates HTTP/2 per request: a client XFCC in any spelling is dropped,
// named in the access log (dropped_headers), and the app gets the verified
// one. The client is curl speaking HTTP/2 with prior knowledge through a
// CONNECT tunnel of sleep's own sidecar; the app is a Go h2c server.
func TestForgedXFCCOverHTTP2(t *testing.T) {
	needTool(t, "python3")
	m := startMesh(t, meshOptions{})

	// The HTTP/2 app, reached through the forwarder that serves the
	// workload's app port.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(appSaw{Method: r.Method, Target: r.RequestURI, Proto: r.Proto, Headers: r.Header})
	})
	srv := &http.Server{Handler: h2c.NewHandler(h, &http2.Server{})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	fwd := filepath.Join(t.TempDir(), "forward.py")
	if err := os.WriteFile(fwd, []byte(tcpForwarder), 0o644); err != nil {
		t.Fatal(err)
	}
	g, err := m.StartWorkload(context.Background(), localmesh.WorkloadSpec{
		Name: "grpcbin", Namespace: "default", ServiceAccount: "grpcbin",
		Service: "grpcbin", ServicePort: 9000,
		App: []string{"python3", fwd, "{{port}}", ln.Addr().String()},
	})
	if err != nil {
		t.Fatal(err)
	}
	m.declareGRPC(t, "grpcbin")

	call := func(extra ...string) (string, string, int) {
		args := append([]string{"-p", "-x", m.Sleep.OutboundProxy, "--http2-prior-knowledge"}, extra...)
		return curl(t, append(args, "http://grpcbin:9000/headers")...)
	}
	// Positive control, once both sidecars have the GRPC port: HTTP/2
	// reaches the app.
	var saw appSaw
	deadline := time.Now().Add(20 * time.Second)
	for {
		body, _, code := call()
		if code == 0 && strings.Contains(body, `"proto":"HTTP/2.0"`) {
			saw = parseAppSaw(t, body)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("HTTP/2 through the GRPC port never worked; last: exit %d %s", code, body)
		}
		time.Sleep(200 * time.Millisecond)
	}
	want := "By=spiffe://cluster.local/ns/default/sa/grpcbin;URI=spiffe://cluster.local/ns/default/sa/sleep"
	if x := saw.header("X-Forwarded-Client-Cert"); len(x) != 1 || x[0] != want {
		t.Fatalf("app saw XFCC %q on HTTP/2; want the verified %q", x, want)
	}

	for _, name := range []string{"X-Forwarded-Client-Cert", "X_Forwarded_Client_Cert"} {
		t.Run(name, func(t *testing.T) {
			body, _, code := call("-H", name+": "+forgedAdmin)
			if code != 0 || strings.Contains(body, forgedAdmin) {
				t.Fatalf("want the app's answer without the forged header: exit %d %s", code, body)
			}
			if x := parseAppSaw(t, body).header("X-Forwarded-Client-Cert"); len(x) != 1 || x[0] != want {
				t.Fatalf("app saw XFCC %q; want only the verified %q", x, want)
			}
			m.waitLogCount(t, "grpcbin", 1, `"msg":"http"`, `"decision":"allow"`, `"protocol":"HTTP/2"`,
				`"dropped_headers":["`+textproto.CanonicalMIMEHeaderKey(strings.ToLower(name))+`"]`)
		})
	}
	if g.Proc.Exited() != nil {
		t.Fatalf("grpcbin's sidecar exited: %v", g.Proc.Exited())
	}
}

// declareGRPC declares a workload's port GRPC (localmesh writes HTTP) in
// the control plane's config directory.
func (m *mesh) declareGRPC(t *testing.T, workload string) {
	t.Helper()
	name := "workload-" + workload + ".yaml"
	y, err := os.ReadFile(filepath.Join(m.ConfigDir, name))
	if err != nil {
		t.Fatal(err)
	}
	if err := m.WriteConfig(name, strings.ReplaceAll(string(y), "protocol: HTTP", "protocol: GRPC")); err != nil {
		t.Fatal(err)
	}
}
