package adversarial

import (
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// Issue #14: HTTP/2 is terminated per request on httpbin's port, declared
// GRPC here. Each abuse of the protocol runs against the real `meshd
// sidecar` with a client holding sleep's valid certificate (the attacker
// is a workload of the mesh), and each checks that the sidecar stays up,
// that other callers are still served, and that its file descriptors and
// goroutines come back to their baseline.

// rbacH2 lets sleep GET and POST /public/* on httpbin, and everything on a
// service "admin" (to show that the :authority a client writes does not
// pick the service a request is authorized for).
const rbacH2 = rbacPublicOnly + `---
apiVersion: rbac.istio.io/v1alpha1
kind: ServiceRole
metadata:
  name: admin-all
  namespace: default
spec:
  rules:
  - services: ["admin.default.svc.cluster.local"]
    methods: ["*"]
---
apiVersion: rbac.istio.io/v1alpha1
kind: ServiceRoleBinding
metadata:
  name: sleep-admin-all
  namespace: default
spec:
  subjects:
  - user: "cluster.local/ns/default/sa/sleep"
  roleRef:
    kind: ServiceRole
    name: admin-all
`

// h2Mesh is a mesh whose httpbin port is declared GRPC, with rbacH2 and
// the small limits of limits_test.go.
func h2Mesh(t *testing.T) *mesh {
	m := startMesh(t, meshOptions{Config: map[string]string{"rbac.yaml": rbacH2}, HttpbinArgs: limArgs, SleepArgs: limArgs})
	m.declareGRPC(t, "httpbin")
	// The app sees HTTP/2 once httpbin's sidecar has the GRPC port (on an
	// HTTP port it gets HTTP/1.1).
	deadline := time.Now().Add(20 * time.Second)
	for {
		body, st := curlH2(t, m, "/public/ready")
		if st == 200 && strings.Contains(body, `"proto":"HTTP/2.0"`) {
			return m
		}
		if time.Now().After(deadline) {
			t.Fatalf("httpbin's port never became GRPC: %d %s", st, body)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// curlH2 is curl speaking HTTP/2 (ALPN h2) with sleep's certificate
// straight to httpbin's sidecar, the path as is. It returns the body and
// the status (0 if curl failed).
func curlH2(t *testing.T, m *mesh, path string, extra ...string) (string, int) {
	t.Helper()
	args := append([]string{"-k", "--http2", "--path-as-is", "--cert", filepath.Join(m.Sleep.CertsDir, "cert-chain.pem"),
		"--key", filepath.Join(m.Sleep.CertsDir, "key.pem"), "-o", "-", "-w", "\n%{http_code}"}, extra...)
	body, _, code := curl(t, append(args, "https://"+m.Httpbin.InboundAddr+path)...)
	if code != 0 {
		return body, 0
	}
	i := strings.LastIndexByte(body, '\n')
	st, _ := strconv.Atoi(body[i+1:])
	return body[:i], st
}

// h2Raw is a raw HTTP/2 connection to httpbin's sidecar with sleep's
// certificate (ALPN h2), preface and SETTINGS sent.
type h2Raw struct {
	c   *tls.Conn
	fr  *http2.Framer
	enc *hpack.Encoder
	buf bytes.Buffer
}

func dialH2Raw(t *testing.T, m *mesh, settings ...http2.Setting) *h2Raw {
	t.Helper()
	cert, err := tls.LoadX509KeyPair(filepath.Join(m.Sleep.CertsDir, "cert-chain.pem"), filepath.Join(m.Sleep.CertsDir, "key.pem"))
	if err != nil {
		t.Fatal(err)
	}
	c, err := tls.Dial("tcp", m.Httpbin.InboundAddr, &tls.Config{InsecureSkipVerify: true, Certificates: []tls.Certificate{cert}, NextProtos: []string{"h2"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	r := &h2Raw{c: c, fr: http2.NewFramer(c, c)}
	r.enc = hpack.NewEncoder(&r.buf)
	r.fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	r.fr.MaxHeaderListSize = 1 << 20
	if _, err := io.WriteString(c, http2.ClientPreface); err != nil {
		t.Fatal(err)
	}
	if err := r.fr.WriteSettings(settings...); err != nil {
		t.Fatal(err)
	}
	return r
}

// block HPACK-encodes a request head.
func (r *h2Raw) block(method, path string, extra ...string) []byte {
	r.buf.Reset()
	fields := []string{":method", method, ":scheme", "https", ":authority", "httpbin:8000", ":path", path}
	fields = append(fields, extra...)
	for i := 0; i < len(fields); i += 2 {
		r.enc.WriteField(hpack.HeaderField{Name: fields[i], Value: fields[i+1]})
	}
	return bytes.Clone(r.buf.Bytes())
}

// drain reads (and answers nothing to) every frame until the connection
// ends; it returns what ended it: a GOAWAY's error code, or the read error.
func (r *h2Raw) drain(timeout time.Duration) (http2.ErrCode, error) {
	r.c.SetReadDeadline(time.Now().Add(timeout))
	for {
		f, err := r.fr.ReadFrame()
		if err != nil {
			return 0, err
		}
		if ga, ok := f.(*http2.GoAwayFrame); ok && ga.ErrCode != http2.ErrCodeNo {
			return ga.ErrCode, nil
		}
	}
}

// h2Healthy checks the sidecar is up, still serves another caller, and
// comes back to its baseline.
func h2Healthy(t *testing.T, m *mesh, base usage) {
	t.Helper()
	if err := m.Httpbin.Proc.Exited(); err != nil {
		t.Fatalf("httpbin's sidecar exited: %v", err)
	}
	if body, st := curlH2(t, m, "/public/after"); st != 200 || !strings.Contains(body, `"proto":"HTTP/2.0"`) {
		t.Fatalf("another caller is not served after the attack: %d %s", st, body)
	}
	m.waitBaseline(t, m.Httpbin, base, 10, 20*time.Second)
	// Memory: the sidecar's peak resident size (VmHWM) since it started.
	if kb := procStatusKB(t, m.Httpbin.Proc.Cmd.Process.Pid, "VmHWM"); kb > h2MaxPeakKB {
		t.Fatalf("httpbin's sidecar peaked at %d MiB resident (bound %d MiB)", kb>>10, h2MaxPeakKB>>10)
	} else {
		t.Logf("peak RSS so far: %d MiB", kb>>10)
	}
}

// h2MaxPeakKB bounds the sidecar's peak RSS through every attack: each
// would take far more unbounded (the CONTINUATION flood sends up to 256
// MiB, the HPACK bomb decodes to 80 MB, the floods queue a million
// answers).
const h2MaxPeakKB = 96 << 10

// procStatusKB reads a "kB" field of /proc/PID/status.
func procStatusKB(t *testing.T, pid int, field string) int {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			n, _ := strconv.Atoi(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")))
			return n
		}
	}
	t.Fatalf("no %s in /proc/%d/status", field, pid)
	return 0
}

func TestHTTP2Abuse(t *testing.T) {
	needTool(t, "curl")
	m := h2Mesh(t)
	base := m.usage(t, m.Httpbin)

	t.Run("rapid reset (CVE-2023-44487)", func(t *testing.T) {
		r := dialH2Raw(t, m)
		go r.drain(30 * time.Second)
		blk := r.block("POST", "/public/x")
		var err error
		sent := 0
		for id := uint32(1); id < 2*50000 && err == nil; id += 2 {
			if err = r.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: blk, EndHeaders: true}); err == nil {
				err = r.fr.WriteRSTStream(id, http2.ErrCodeCancel)
				sent++
			}
		}
		t.Logf("opened and reset %d streams (%v)", sent, err)
		r.c.Close()
		h2Healthy(t, m, base)
	})

	t.Run("CONTINUATION flood (CVE-2024-27316)", func(t *testing.T) {
		r := dialH2Raw(t, m)
		done := make(chan error, 1)
		go func() { _, err := r.drain(30 * time.Second); done <- err }()
		if err := r.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: r.block("GET", "/public/x")}); err != nil {
			t.Fatal(err)
		}
		// Never-ending header block: 16 KiB CONTINUATION frames of new
		// literal fields, up to 256 MiB.
		r.buf.Reset()
		for r.buf.Len() < 16<<10 {
			r.enc.WriteField(hpack.HeaderField{Name: "x-flood", Value: strings.Repeat("a", 1000), Sensitive: true})
		}
		frag := bytes.Clone(r.buf.Bytes())
		sent := 0
		var err error
		for sent < 256<<20 && err == nil {
			err = r.fr.WriteContinuation(1, false, frag)
			sent += len(frag)
		}
		if err == nil {
			t.Fatalf("the sidecar read %d MiB of one header block without closing the connection", sent>>20)
		}
		t.Logf("connection closed after %d KiB of header block: %v", sent>>10, err)
		if sent > 16<<20 {
			t.Fatalf("the sidecar took %d MiB of one header block before closing (bounded by 64 KiB of headers)", sent>>20)
		}
		r.c.Close()
		<-done
		h2Healthy(t, m, base)
	})

	t.Run("HPACK bomb", func(t *testing.T) {
		r := dialH2Raw(t, m)
		// One 4000-byte field into the dynamic table, then 20000
		// one-byte references to it: 80 MB decoded from ~24 KB.
		var b bytes.Buffer
		b.Write(r.block("GET", "/public/bomb"))
		enc := hpack.NewEncoder(&b)
		enc.WriteField(hpack.HeaderField{Name: "x-bomb", Value: strings.Repeat("b", 4000)})
		for i := 0; i < 20000; i++ {
			b.WriteByte(0x80 | 62) // indexed: the newest dynamic entry
		}
		blk := b.Bytes()
		first, rest := blk[:16000], blk[16000:]
		r.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: first, EndStream: true})
		for len(rest) > 0 {
			n := min(len(rest), 16000)
			r.fr.WriteContinuation(1, n == len(rest), rest[:n])
			rest = rest[n:]
		}
		status := ""
		r.c.SetReadDeadline(time.Now().Add(10 * time.Second))
		for status == "" {
			f, err := r.fr.ReadFrame()
			if err != nil {
				status = "closed: " + err.Error()
				break
			}
			switch f := f.(type) {
			case *http2.MetaHeadersFrame:
				status = f.PseudoValue("status")
			case *http2.RSTStreamFrame:
				status = "reset " + f.ErrCode.String()
			case *http2.GoAwayFrame:
				status = "goaway " + f.ErrCode.String()
			}
		}
		t.Logf("answer to the bomb: %s", status)
		if status == "200" {
			t.Fatal("a header block of 80 MB decoded reached the app")
		}
		r.c.Close()
		if strings.Contains(m.Log("httpbin"), `"path":"/public/bomb","status":200`) {
			t.Fatal("the sidecar forwarded the bomb to the app")
		}
		h2Healthy(t, m, base)
	})

	for _, flood := range []string{"SETTINGS", "PING"} {
		t.Run(flood+" flood", func(t *testing.T) {
			// Frames that each ask for an answer, from a client that
			// never reads one: the sidecar must not queue answers
			// without bound.
			r := dialH2Raw(t, m)
			var err error
			sent := 0
			for sent < 1_000_000 && err == nil {
				if flood == "PING" {
					err = r.fr.WritePing(false, [8]byte{byte(sent)})
				} else {
					err = r.fr.WriteSettings(http2.Setting{ID: http2.SettingMaxConcurrentStreams, Val: uint32(sent)})
				}
				sent++
			}
			if err == nil {
				if _, rerr := r.drain(10 * time.Second); rerr == nil {
					t.Fatalf("the sidecar kept a connection that sent %d %s frames without reading an answer", sent, flood)
				}
			}
			t.Logf("%d %s frames; write error %v", sent, flood, err)
			r.c.Close()
			h2Healthy(t, m, base)
		})
	}

	t.Run("forged XFCC and :authority", func(t *testing.T) {
		body, st := curlH2(t, m, "/public/who", "-H", "X-Forwarded-Client-Cert: "+forgedAdmin, "-H", "x_forwarded_client_cert: "+forgedAdmin,
			"-H", "Host: admin.default.svc.cluster.local")
		if st != 200 || strings.Contains(body, forgedAdmin) {
			t.Fatalf("%d %s", st, body)
		}
		saw := parseAppSaw(t, body)
		if x := saw.header("X-Forwarded-Client-Cert"); len(x) != 1 || x[0] != sleepXFCC {
			t.Fatalf("app saw XFCC %q, want only %q", x, sleepXFCC)
		}
		// sleep may do anything on "admin", nothing but /public/* on
		// httpbin: an :authority naming admin does not make httpbin's
		// /secret allowed. The service is the port's.
		if body, st := curlH2(t, m, "/secret", "-H", "Host: admin.default.svc.cluster.local"); st != 403 || !strings.Contains(body, "RBAC: access denied") {
			t.Fatalf("/secret with :authority admin: %d %s; want 403", st, body)
		}
		m.waitLogCount(t, "httpbin", 1, `"msg":"http"`, `"host":"admin.default.svc.cluster.local","path":"/secret","status":403,"decision":"deny"`)
	})

	t.Run("dot-segment :path", func(t *testing.T) {
		for _, tc := range []struct {
			path, target string
			status       int
		}{
			{"/public/a/../b?q=1", "/public/b?q=1", 200},
			{"/public/../secret", "", 403},
			{"/public/%2e%2e/secret", "", 403},
			{"/public/..%2fsecret", "", 400},
			{"/public/..;/secret", "", 400},
		} {
			body, st := curlH2(t, m, tc.path)
			if st != tc.status {
				t.Fatalf("%s: %d %s; want %d", tc.path, st, body, tc.status)
			}
			if tc.target != "" {
				if saw := parseAppSaw(t, body); saw.Target != tc.target {
					t.Fatalf("%s: app got %q, want the normalised %q", tc.path, saw.Target, tc.target)
				}
			}
		}
		m.waitLogCount(t, "httpbin", 2, `"msg":"http"`, `"path":"/secret","status":403`, `"protocol":"HTTP/2"`)
		m.waitLogCount(t, "httpbin", 2, `"msg":"http"`, `"status":400,"decision":"deny","reason":"bad_path"`, `"protocol":"HTTP/2"`)
	})

	t.Run("oversized headers", func(t *testing.T) {
		body, st := curlH2(t, m, "/public/big", "-H", "X-Big: "+strings.Repeat("x", 100<<10))
		if st == 200 {
			t.Fatalf("a 100 KiB header reached the app: %.200s", body)
		}
		t.Logf("100 KiB header: status %d", st)
		h2Healthy(t, m, base)
	})

	t.Run("flow-control stall", func(t *testing.T) {
		// A client that opens streams with a zero window and never
		// grants more: each response stalls in the sidecar, which resets
		// the stream after --body-idle-timeout (2s) instead of holding it
		// and the app's connection.
		const streams = 100
		var conns []*h2Raw
		resets := make(chan error, 4)
		for i := 0; i < 4; i++ {
			r := dialH2Raw(t, m, http2.Setting{ID: http2.SettingInitialWindowSize, Val: 0})
			conns = append(conns, r)
			for id := uint32(1); id < 2*streams/4; id += 2 {
				if err := r.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: r.block("GET", fmt.Sprintf("/public/stall%d", id)), EndHeaders: true, EndStream: true}); err != nil {
					t.Fatal(err)
				}
			}
			go func() {
				n := 0
				r.c.SetReadDeadline(time.Now().Add(30 * time.Second))
				for n < streams/4 {
					f, err := r.fr.ReadFrame()
					if err != nil {
						resets <- fmt.Errorf("after %d resets: %w", n, err)
						return
					}
					if _, ok := f.(*http2.RSTStreamFrame); ok {
						n++
					}
				}
				resets <- nil
			}()
		}
		for range conns {
			if err := <-resets; err != nil && !errors.Is(err, io.EOF) {
				t.Fatalf("stalled streams not reset: %v", err)
			}
		}
		for _, r := range conns {
			r.c.Close()
		}
		h2Healthy(t, m, base)
	})
}
