package main

import (
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/meshauth/meshauth/internal/client"
	"github.com/meshauth/meshauth/internal/identity"
)

// renewFlags are meshctl cert renew's flags.
type renewFlags struct {
	certDir, out, keyType string
	ttl                   time.Duration
}

// certRenewCmd is `meshctl cert renew`: a renewal over mTLS, as a sidecar
// does it, for workloads without one (a VM, a batch job) and for audits.
func certRenewCmd(g *globalFlags) *cobra.Command {
	fl := &renewFlags{}
	cmd := &cobra.Command{
		Use:   "renew",
		Short: "renew the certificate in --cert-dir over mTLS; writes a new cert-chain.pem, key.pem, root-cert.pem",
		Long: `renew presents the certificate and key in --cert-dir to the CA (mTLS: the
current certificate is the proof of identity, no join token), sends a CSR
for a fresh key with the same SPIFFE ID, and writes the three files into
--out (default: --cert-dir, replaced atomically, key first).

The CA refuses a renewal with a revoked or expired certificate, and one
asking for a longer --ttl than the certificate's lineage was granted when
it started (the CA's default TTL, or the longer TTL its first issuance
asked for): a renewal cannot extend a certificate's reach.`,
		Example: `  meshctl cert renew --cert-dir ./sleep-certs
  meshctl cert renew --cert-dir ./sleep-certs --out ./sleep-certs.new --ttl 12h`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return runCertRenew(cmd, g, fl) },
	}
	f := cmd.Flags()
	f.StringVar(&fl.certDir, "cert-dir", "", "directory with the current cert-chain.pem and key.pem")
	f.StringVar(&fl.out, "out", "", "directory for the new files (default: --cert-dir)")
	f.DurationVar(&fl.ttl, "ttl", 0, "certificate lifetime (default: the CA's, 24h; at most what the lineage was granted)")
	f.StringVar(&fl.keyType, "key-type", "ecdsa-p256", "key: ecdsa-p256, ecdsa-p384, rsa-2048 or rsa-3072")
	return cmd
}

// runCertRenew renews the certificate in --cert-dir over mTLS and writes
// the new files.
func runCertRenew(cmd *cobra.Command, g *globalFlags, f *renewFlags) error {
	certDir, out := f.certDir, f.out
	if certDir == "" {
		return &exitError{2, fmt.Errorf("cert renew: --cert-dir is required")}
	}
	if out == "" {
		out = certDir
	}
	cur, id, err := loadCurrentCert(certDir)
	if err != nil {
		return err
	}
	leaf := cur.Leaf
	roots, err := renewRoots(g.Dir, certDir, id)
	if err != nil {
		return err
	}
	key, keyDER, err := newKey(f.keyType)
	if err != nil {
		return err
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: leaf.URIs}, key)
	if err != nil {
		return fmt.Errorf("cert renew: CSR: %w", err)
	}
	resp, err := requestCert(cmd.Context(), g, client.Options{
		Roots: func() *identity.Bundle { return roots },
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return cur, nil
		}}, csr, f.ttl, "cert renew")
	if err != nil {
		return err
	}
	chain, err := identity.ParseCertsPEM([]byte(strings.Join(resp.CertChain, "")))
	if err != nil || len(chain) == 0 {
		return fmt.Errorf("cert renew: CA response: %v", err)
	}
	if err := writeCertFiles(out, keyDER, resp); err != nil {
		return err
	}
	fmt.Fprintf(cmd.OutOrStdout(), "renewed %s serial %s (from %s), not after %s\nwrote %s/{cert-chain.pem,key.pem,root-cert.pem}\n",
		resp.SpiffeId, resp.Serial, identity.SerialHex(leaf), chain[0].NotAfter.UTC().Format(time.RFC3339), out)
	return nil
}

// loadCurrentCert loads the certificate and key in certDir (with its parsed
// Leaf) and the one SPIFFE ID it carries.
func loadCurrentCert(certDir string) (*tls.Certificate, identity.ID, error) {
	cur, err := tls.LoadX509KeyPair(filepath.Join(certDir, "cert-chain.pem"), filepath.Join(certDir, "key.pem"))
	if err != nil {
		return nil, identity.ID{}, fmt.Errorf("cert renew: %s: %w", certDir, err)
	}
	leaf, err := x509.ParseCertificate(cur.Certificate[0])
	if err != nil {
		return nil, identity.ID{}, fmt.Errorf("cert renew: %s/cert-chain.pem: %w", certDir, err)
	}
	cur.Leaf = leaf
	if len(leaf.URIs) != 1 {
		return nil, identity.ID{}, fmt.Errorf("cert renew: %s/cert-chain.pem has %d URI SANs, want one SPIFFE ID", certDir, len(leaf.URIs))
	}
	id, err := identity.Parse(leaf.URIs[0].String())
	if err != nil {
		return nil, identity.ID{}, fmt.Errorf("cert renew: %s/cert-chain.pem: %w", certDir, err)
	}
	return &cur, id, nil
}

// renewRoots are the roots to trust the control plane by: the control
// plane's directory's, else the ones that came with the certificate.
func renewRoots(dir, certDir string, id identity.ID) (*identity.Bundle, error) {
	roots, err := client.LoadRoots(dir, id.TrustDomain)
	if err != nil {
		// Not next to a control plane: the roots that came with the certificate.
		data, rerr := os.ReadFile(filepath.Join(certDir, "root-cert.pem"))
		if rerr != nil {
			return nil, err
		}
		if roots, err = client.BundleFromPEM(data, id.TrustDomain); err != nil {
			return nil, fmt.Errorf("cert renew: %s/root-cert.pem: %w", certDir, err)
		}
	}
	return roots, nil
}
