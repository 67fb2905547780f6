package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	pb "github.com/meshauth/meshauth/api/meshauth/v1"
	"github.com/meshauth/meshauth/internal/atomicfile"
	"github.com/meshauth/meshauth/internal/client"
	"github.com/meshauth/meshauth/internal/identity"
)

// newCertCmd builds `meshctl cert` and its subcommands.
func newCertCmd(g *globalFlags) *cobra.Command {
	certCmd := &cobra.Command{Use: "cert", Short: "issue and inspect workload certificates"}
	certCmd.AddCommand(newCertIssueCmd(g), newCertInspectCmd(), certRenewCmd(g))
	return certCmd
}

// issueFlags are meshctl cert issue's flags.
type issueFlags struct {
	ns, sa, token, out, keyType, rootPath string
	ttl                                   time.Duration
}

// newCertIssueCmd builds `meshctl cert issue`.
func newCertIssueCmd(g *globalFlags) *cobra.Command {
	fl := &issueFlags{}
	issue := &cobra.Command{
		Use:   "issue",
		Short: "get a workload certificate with a join token; writes cert-chain.pem, key.pem, root-cert.pem",
		Long: `issue generates a key locally (it never leaves this machine), sends a CSR
for spiffe://<td>/ns/N/sa/S with the join token as proof, and writes the
seed's three files into --out: cert-chain.pem, key.pem (mode 0600) and
root-cert.pem.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return runCertIssue(cmd, g, fl) },
	}
	f := issue.Flags()
	f.StringVarP(&fl.ns, "namespace", "n", "", "namespace of the identity")
	f.StringVarP(&fl.sa, "service-account", "s", "", "service account of the identity")
	f.StringVar(&fl.token, "token", "", "join token from `meshctl token create`")
	f.StringVar(&fl.out, "out", "", "directory for cert-chain.pem, key.pem, root-cert.pem")
	f.DurationVar(&fl.ttl, "ttl", 0, "certificate lifetime (default: the CA's, 24h)")
	f.StringVar(&fl.rootPath, "ca-root", "", "roots to trust the control plane by (default DIR/root-cert.pem)")
	f.StringVar(&fl.keyType, "key-type", "ecdsa-p256", "key: ecdsa-p256, ecdsa-p384, rsa-2048 or rsa-3072")
	return issue
}

// newCertInspectCmd builds `meshctl cert inspect`.
func newCertInspectCmd() *cobra.Command {
	var rootFile, output string
	inspect := &cobra.Command{
		Use:   "inspect FILE",
		Short: "show a certificate's SPIFFE ID, issuer, validity and chain verification",
		Long: `inspect prints what the seed reads with openssl x509 -text | grep: subject,
SPIFFE ID (URI SAN), issuer, validity and time left, then verifies the chain
in FILE against --root (default: root-cert.pem next to FILE). It exits 1 if
the chain does not verify.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			rep, err := inspectFile(args[0], rootFile, time.Now())
			if err != nil {
				return err
			}
			if output == "json" {
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				if err := enc.Encode(rep); err != nil {
					return err
				}
			} else {
				rep.print(cmd.OutOrStdout())
			}
			if rep.Verify != nil && !rep.Verify.OK {
				return &exitError{1, fmt.Errorf("%s: chain does not verify: %s", args[0], rep.Verify.Error)}
			}
			return nil
		},
	}
	inspect.Flags().StringVar(&rootFile, "root", "", "root certificate(s) to verify against (default: root-cert.pem beside FILE, if present)")
	inspect.Flags().StringVarP(&output, "output", "o", "text", "output format: text or json")
	return inspect
}

// runCertIssue gets a certificate with a join token and writes the files.
func runCertIssue(cmd *cobra.Command, g *globalFlags, f *issueFlags) (err error) {
	ns, sa, token, out, keyType, rootPath, ttl := f.ns, f.sa, f.token, f.out, f.keyType, f.rootPath, f.ttl
	if ns == "" || sa == "" || token == "" || out == "" {
		return &exitError{2, fmt.Errorf("cert issue: --namespace, --service-account, --token and --out are required")}
	}
	var roots *identity.Bundle
	if rootPath != "" {
		data, err := os.ReadFile(rootPath)
		if err != nil {
			return err
		}
		if roots, err = client.BundleFromPEM(data, ""); err != nil {
			return fmt.Errorf("%s: %w", rootPath, err)
		}
	} else if roots, err = client.LoadRoots(g.Dir, ""); err != nil {
		return err
	}
	id, err := identity.New(roots.TrustDomain, ns, sa)
	if err != nil {
		return &exitError{2, err}
	}
	key, keyDER, err := newKey(keyType)
	if err != nil {
		return err
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: []*url.URL{id.SPIFFE().URL()}}, key)
	if err != nil {
		return fmt.Errorf("cert issue: CSR: %w", err)
	}
	resp, err := requestCert(cmd.Context(), g, client.Options{Token: token,
		Roots: func() *identity.Bundle { return roots }}, csr, ttl, "cert issue")
	if err != nil {
		return err
	}
	if err := writeCertFiles(out, keyDER, resp); err != nil {
		return err
	}
	fmt.Fprintf(cmd.OutOrStdout(), "issued %s serial %s\nwrote %s/{cert-chain.pem,key.pem,root-cert.pem}\n", resp.SpiffeId, resp.Serial, out)
	return nil
}

func newKey(kind string) (any, []byte, error) {
	var key any
	var err error
	switch kind {
	case "ecdsa-p256", "":
		key, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	case "ecdsa-p384":
		key, err = ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	case "rsa-2048":
		key, err = rsa.GenerateKey(rand.Reader, 2048)
	case "rsa-3072":
		key, err = rsa.GenerateKey(rand.Reader, 3072)
	default:
		return nil, nil, &exitError{2, fmt.Errorf("--key-type %q: use ecdsa-p256, ecdsa-p384, rsa-2048 or rsa-3072", kind)}
	}
	if err != nil {
		return nil, nil, err
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	return key, der, err
}

// requestCert sends a CSR to the CA over a connection dialed with opts (its
// Dir and Addr from --dir/--addr) and returns the answer; what names the
// command in errors.
func requestCert(ctx context.Context, g *globalFlags, opts client.Options, csrDER []byte, ttl time.Duration, what string) (*pb.CreateCertificateResponse, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	opts.Dir, opts.Addr = g.Dir, g.Addr
	conn, err := client.Dial(ctx, opts)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	resp, err := pb.NewCertificateAuthorityClient(conn).CreateCertificate(ctx, &pb.CreateCertificateRequest{
		Csr: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: csrDER}), TtlSeconds: int64(ttl / time.Second),
	})
	if err != nil {
		return nil, rpcError(what, err)
	}
	return resp, nil
}

// writeCertFiles writes the seed's three files into out, atomically: key.pem
// first and 0600 from creation, so it is never world-readable, then
// cert-chain.pem and root-cert.pem as the CA sent them.
func writeCertFiles(out string, keyDER []byte, resp *pb.CreateCertificateResponse) error {
	if err := os.MkdirAll(out, 0o755); err != nil {
		return err
	}
	for _, f := range []struct {
		name string
		data string
		mode os.FileMode
	}{
		{"key.pem", string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})), 0o600},
		{"cert-chain.pem", strings.Join(resp.CertChain, ""), 0o644},
		{"root-cert.pem", strings.Join(resp.Roots, ""), 0o644},
	} {
		if err := atomicfile.Write(filepath.Join(out, f.name), []byte(f.data), f.mode); err != nil {
			return err
		}
	}
	return nil
}

// certReport is `meshctl cert inspect -o json`.
type certReport struct {
	File      string        `json:"file"`
	Subject   string        `json:"subject"`
	SPIFFEID  string        `json:"spiffeID,omitempty"`
	URIs      []string      `json:"uris,omitempty"`
	DNSNames  []string      `json:"dnsNames,omitempty"`
	Issuer    string        `json:"issuer"`
	Serial    string        `json:"serial"`
	NotBefore time.Time     `json:"notBefore"`
	NotAfter  time.Time     `json:"notAfter"`
	TimeLeft  string        `json:"timeLeft"`
	Key       string        `json:"key"`
	IsCA      bool          `json:"isCA"`
	ExtUsage  []string      `json:"extKeyUsage,omitempty"`
	Chain     []chainEntry  `json:"chain"`
	Verify    *verifyReport `json:"verify,omitempty"`
}

type chainEntry struct {
	Subject  string `json:"subject"`
	Issuer   string `json:"issuer"`
	SHA256   string `json:"sha256"`
	NotAfter string `json:"notAfter"`
}

type verifyReport struct {
	Root     string `json:"root"`
	OK       bool   `json:"ok"`
	Identity string `json:"identity,omitempty"`
	Reason   string `json:"reason,omitempty"`
	Error    string `json:"error,omitempty"`
}

func inspectFile(file, rootFile string, now time.Time) (*certReport, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	chain, err := identity.ParseCertsPEM(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", file, err)
	}
	leaf := chain[0]
	rep := &certReport{
		File: file, Subject: leaf.Subject.String(), Issuer: leaf.Issuer.String(), Serial: identity.SerialHex(leaf),
		NotBefore: leaf.NotBefore.UTC(), NotAfter: leaf.NotAfter.UTC(), TimeLeft: left(leaf.NotAfter, now),
		Key: keyDesc(leaf.PublicKey), IsCA: leaf.IsCA, DNSNames: leaf.DNSNames,
	}
	for _, u := range leaf.URIs {
		rep.URIs = append(rep.URIs, u.String())
	}
	if len(leaf.URIs) == 1 && leaf.URIs[0].Scheme == "spiffe" {
		rep.SPIFFEID = leaf.URIs[0].String()
	}
	for _, u := range leaf.ExtKeyUsage {
		rep.ExtUsage = append(rep.ExtUsage, map[x509.ExtKeyUsage]string{
			x509.ExtKeyUsageServerAuth: "serverAuth", x509.ExtKeyUsageClientAuth: "clientAuth",
		}[u])
	}
	for _, c := range chain {
		rep.Chain = append(rep.Chain, chainEntry{Subject: c.Subject.String(), Issuer: c.Issuer.String(), SHA256: identity.Fingerprint(c), NotAfter: c.NotAfter.UTC().Format(time.RFC3339)})
	}
	if rootFile == "" {
		if p := filepath.Join(filepath.Dir(file), "root-cert.pem"); p != file {
			if _, err := os.Stat(p); err == nil {
				rootFile = p
			}
		}
	}
	if rootFile != "" {
		rdata, err := os.ReadFile(rootFile)
		if err != nil {
			return nil, err
		}
		b, err := client.BundleFromPEM(rdata, "")
		if err != nil {
			return nil, fmt.Errorf("%s: %w", rootFile, err)
		}
		v := &verifyReport{Root: rootFile}
		id, err := b.Verify(chain, now)
		if err != nil {
			v.Reason, v.Error = identity.Reason(err), err.Error()
		} else {
			v.OK, v.Identity = true, id.String()
		}
		rep.Verify = v
	}
	return rep, nil
}

func keyDesc(k any) string {
	switch k := k.(type) {
	case *ecdsa.PublicKey:
		return "ECDSA " + k.Curve.Params().Name
	case *rsa.PublicKey:
		return fmt.Sprintf("RSA %d", k.N.BitLen())
	}
	return fmt.Sprintf("%T", k)
}

func (r *certReport) print(w io.Writer) {
	subject := r.Subject
	if subject == "" {
		subject = "(empty; the identity is the SPIFFE ID)"
	}
	fmt.Fprintf(w, "File:        %s (%d certificate(s))\n", r.File, len(r.Chain))
	fmt.Fprintf(w, "Subject:     %s\n", subject)
	if r.SPIFFEID != "" {
		fmt.Fprintf(w, "SPIFFE ID:   %s\n", r.SPIFFEID)
	} else {
		fmt.Fprintf(w, "SPIFFE ID:   none (URI SANs: %v)\n", r.URIs)
	}
	if len(r.DNSNames) > 0 {
		fmt.Fprintf(w, "DNS names:   %s\n", strings.Join(r.DNSNames, ", "))
	}
	fmt.Fprintf(w, "Issuer:      %s\n", r.Issuer)
	fmt.Fprintf(w, "Serial:      %s\n", r.Serial)
	fmt.Fprintf(w, "Not before:  %s\n", r.NotBefore.Format(time.RFC3339))
	fmt.Fprintf(w, "Not after:   %s (%s)\n", r.NotAfter.Format(time.RFC3339), r.TimeLeft)
	fmt.Fprintf(w, "Key:         %s   CA: %v   Ext key usage: %s\n", r.Key, r.IsCA, strings.Join(r.ExtUsage, ", "))
	for i, c := range r.Chain[1:] {
		fmt.Fprintf(w, "Chain[%d]:    %s (sha256 %s)\n", i+1, c.Subject, short(c.SHA256))
	}
	switch {
	case r.Verify == nil:
		fmt.Fprintln(w, "Verify:      skipped (no --root and no root-cert.pem beside the file)")
	case r.Verify.OK:
		fmt.Fprintf(w, "Verify:      OK against %s: %s\n", r.Verify.Root, r.Verify.Identity)
	default:
		fmt.Fprintf(w, "Verify:      FAILED against %s (%s): %s\n", r.Verify.Root, r.Verify.Reason, r.Verify.Error)
	}
}
