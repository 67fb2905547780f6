package control_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"math/big"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"

	pb "github.com/meshauth/meshauth/api/meshauth/v1"
	"github.com/meshauth/meshauth/internal/client"
	"github.com/meshauth/meshauth/internal/control"
)

// BenchmarkIssuance measures ECDSA P-256 issuances per second two ways in
// one run, so the figures share the machine's state:
//
//   - raw: the Go limit with no API, store or auth — parse the CSR, check its
//     signature, x509.CreateCertificate (which also verifies what it signed);
//   - grpc-mtls / grpc-token: the real API over TLS on loopback, parallel
//     clients renewing with their certificate or bootstrapping with a join
//     token, every issuance committed to the bbolt log before it returns.
//
// Run: go test ./internal/control/ -run '^$' -bench Issuance -benchtime 20000x -cpu 2
func BenchmarkIssuance(b *testing.B) {
	csrs := make([][]byte, 64)
	for i := range csrs {
		csrs[i] = newCSR(b, ecKey(b), nil)
	}

	b.Run("raw", func(b *testing.B) {
		rootKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "root"}, NotBefore: time.Now(), NotAfter: time.Now().Add(time.Hour),
			IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
		der, _ := x509.CreateCertificate(rand.Reader, tmpl, tmpl, rootKey.Public(), rootKey)
		root, _ := x509.ParseCertificate(der)
		uri, _ := url.Parse(sleep)
		ders := make([][]byte, len(csrs))
		for i, c := range csrs {
			ders[i] = pemToDER(c)
		}
		b.ResetTimer()
		start, cpu0 := time.Now(), cpuTime()
		b.RunParallel(func(pb *testing.PB) {
			i := 0
			for pb.Next() {
				i++
				csr, err := x509.ParseCertificateRequest(ders[i%len(ders)])
				if err != nil {
					b.Error(err)
					return
				}
				if err := csr.CheckSignature(); err != nil {
					b.Error(err)
					return
				}
				serial, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
				leaf := &x509.Certificate{SerialNumber: serial, NotBefore: time.Now(), NotAfter: time.Now().Add(time.Hour), URIs: []*url.URL{uri},
					KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}}
				if _, err := x509.CreateCertificate(rand.Reader, leaf, root, csr.PublicKey, rootKey); err != nil {
					b.Error(err)
					return
				}
			}
		})
		reportRates(b, start, cpu0)
	})

	for _, mode := range []string{"grpc-mtls", "grpc-token"} {
		b.Run(mode, func(b *testing.B) {
			e := start(b, func(c *control.Config) { c.Log = quietLogger() })
			var o client.Options
			if mode == "grpc-mtls" {
				cert, _ := e.issueTLS(b, "default", "sleep")
				o.GetClientCertificate = withCert(cert)
			} else {
				o.Token = e.token(b, "default", "sleep", time.Hour, 1<<30)
			}
			// A few connections, as a few sidecars' agents (or one busy
			// node agent) would hold; many streams multiplex on each.
			conns := make([]*grpc.ClientConn, 4)
			for i := range conns {
				conns[i] = e.dial(b, o)
				// Warm the connection so the TLS handshake is not timed.
				if _, err := pb.NewCertificateAuthorityClient(conns[i]).GetTrustBundle(context.Background(), &pb.GetTrustBundleRequest{}); err != nil {
					b.Fatal(err)
				}
			}
			b.SetParallelism(128) // 256 client goroutines on 2 cores
			b.ResetTimer()
			start, cpu0 := time.Now(), cpuTime()
			next := make(chan int, 1024)
			go func() {
				for i := 0; ; i++ {
					select {
					case next <- i:
					case <-b.Context().Done():
						return
					}
				}
			}()
			b.RunParallel(func(p *testing.PB) {
				i := <-next
				c := pb.NewCertificateAuthorityClient(conns[i%len(conns)])
				for p.Next() {
					i++
					if _, err := c.CreateCertificate(context.Background(), &pb.CreateCertificateRequest{Csr: csrs[i%len(csrs)]}); err != nil {
						b.Error(err)
						return
					}
				}
			})
			reportRates(b, start, cpu0)
		})
	}
}

// reportRates reports issuances per second of wall time and the process CPU
// time per issuance. On this shared 2-core machine other work takes a
// varying share of the cores, so wall-clock rates swing 2x between runs;
// CPU per issuance does not, and 2 cores / (CPU per issuance) is the rate
// the same work reaches when it has both cores.
func reportRates(b *testing.B, start time.Time, cpu0 time.Duration) {
	wall := time.Since(start)
	cpu := cpuTime() - cpu0
	b.ReportMetric(float64(b.N)/wall.Seconds(), "issuances/s")
	b.ReportMetric(float64(cpu.Microseconds())/float64(b.N), "cpu-us/op")
	b.ReportMetric(2*float64(b.N)/cpu.Seconds(), "2core-issuances/s")
}

// cpuTime is the process's user+system CPU time so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkIssuanceProcess is the API benchmark against a real `meshd
// control` process, so the server's CPU can be read apart from the
// clients' (/proc/PID/stat): server-cpu-us/op is what one issuance costs the
// CA, and 2 cores divided by it is the CA's rate with the cores to itself.
// mtls renews with a certificate, token bootstraps with a join token.
//
// Run: go test ./internal/control/ -run '^$' -bench IssuanceProcess -benchtime 20000x -cpu 2
func BenchmarkIssuanceProcess(b *testing.B) {
	for _, mode := range []string{"mtls", "token"} {
		b.Run(mode, func(b *testing.B) { benchIssuanceProcess(b, mode) })
	}
}

func benchIssuanceProcess(b *testing.B, mode string) {
	meshd, _ := binaries(b)
	dir := b.TempDir()
	// MESHAUTH_BENCH_CPUPROFILE=FILE profiles the meshd process itself (the
	// mode is added to the name: FILE.mtls, FILE.token).
	var extra []string
	prof := os.Getenv("MESHAUTH_BENCH_CPUPROFILE")
	if prof != "" {
		prof += "." + mode
		extra = []string{"--cpuprofile", prof}
	}
	p := startMeshd(b, meshd, dir, extra...)
	e := &env{dir: dir}
	var o client.Options
	if mode == "mtls" {
		cert, _ := e.issueTLS(b, "default", "sleep")
		o.GetClientCertificate = withCert(cert)
	} else {
		o.Token = e.token(b, "default", "sleep", time.Hour, 1<<30)
	}
	csrs := make([][]byte, 64)
	for i := range csrs {
		csrs[i] = newCSR(b, ecKey(b), nil)
	}
	conns := make([]*grpc.ClientConn, 4)
	for i := range conns {
		conns[i] = e.dial(b, o)
		if _, err := pb.NewCertificateAuthorityClient(conns[i]).GetTrustBundle(context.Background(), &pb.GetTrustBundleRequest{}); err != nil {
			b.Fatal(err)
		}
	}
	b.SetParallelism(128)
	var n atomic.Int64
	b.ResetTimer()
	start, srv0 := time.Now(), procCPU(b, p.cmd.Process.Pid)
	b.RunParallel(func(pb2 *testing.PB) {
		i := int(n.Add(1))
		c := pb.NewCertificateAuthorityClient(conns[i%len(conns)])
		for pb2.Next() {
			i++
			if _, err := c.CreateCertificate(context.Background(), &pb.CreateCertificateRequest{Csr: csrs[i%len(csrs)]}); err != nil {
				b.Error(err)
				return
			}
		}
	})
	wall, srv := time.Since(start), procCPU(b, p.cmd.Process.Pid)-srv0
	b.ReportMetric(float64(b.N)/wall.Seconds(), "issuances/s")
	b.ReportMetric(float64(srv.Microseconds())/float64(b.N), "server-cpu-us/op")
	b.ReportMetric(2*float64(b.N)/srv.Seconds(), "server-2core-issuances/s")
	if prof != "" {
		p.cmd.Process.Signal(os.Interrupt) // meshd writes the profile on exit
		<-p.done
	}
}

// procCPU reads a process's user+system CPU time from /proc/PID/stat.
func procCPU(b *testing.B, pid int) time.Duration {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		b.Fatal(err)
	}
	// Fields after the ")" that ends the command name; utime and stime are
	// the 14th and 15th fields of the line, in clock ticks (100/s on Linux).
	f := strings.Fields(string(data[strings.LastIndexByte(string(data), ')')+2:]))
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * 10 * time.Millisecond
}
