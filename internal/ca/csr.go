package ca

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/x509"
	"encoding/asn1"
	"encoding/pem"
	"time"

	"github.com/meshauth/meshauth/internal/identity"
)

var (
	oidBasicConstraints = asn1.ObjectIdentifier{2, 5, 29, 19}
	oidSubjectAltName   = asn1.ObjectIdentifier{2, 5, 29, 17}
)

// maxCSRSize bounds the input before any parsing: a workload CSR with an
// RSA-4096 key is under 2 KiB, so 16 KiB leaves room and keeps hostile input
// from costing the parser much.
const maxCSRSize = 16 << 10

// ParseCSR decodes a PEM ("CERTIFICATE REQUEST") or DER PKCS#10 request.
func ParseCSR(data []byte) (*x509.CertificateRequest, error) {
	if len(data) == 0 {
		return nil, refuse(KindInvalid, ReasonBadCSR, "empty CSR: send a PKCS#10 certificate request (PEM or DER)")
	}
	if len(data) > maxCSRSize {
		return nil, refuse(KindInvalid, ReasonBadCSR, "CSR is %d bytes, over the %d byte limit", len(data), maxCSRSize)
	}
	der := data
	if blk, _ := pem.Decode(data); blk != nil {
		if blk.Type != "CERTIFICATE REQUEST" && blk.Type != "NEW CERTIFICATE REQUEST" {
			return nil, refuse(KindInvalid, ReasonBadCSR, "PEM block is %q, want \"CERTIFICATE REQUEST\"", blk.Type)
		}
		der = blk.Bytes
	}
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		return nil, refuse(KindInvalid, ReasonBadCSR, "CSR does not parse as PKCS#10: %v", err)
	}
	return csr, nil
}

// checkCSR applies every rule a workload CSR must meet before the CA signs it
// for id, and returns the first refusal. The order puts the cheap structural
// checks before the signature check, which costs an ECDSA/RSA verification.
//
// The CA never copies anything but the public key from a CSR into the
// certificate, so most of these are refusals of intent rather than defences
// against injection: a CSR that asks for CA:TRUE or an extra DNS name was
// made by something that expects to get it, and silently dropping the ask
// would hide the problem.
func checkCSR(csr *x509.CertificateRequest, id identity.ID) error {
	switch k := csr.PublicKey.(type) {
	case *ecdsa.PublicKey:
		if k.Curve != elliptic.P256() && k.Curve != elliptic.P384() {
			return refuse(KindInvalid, ReasonKeyType, "CSR key is ECDSA %s; use P-256 or P-384", k.Curve.Params().Name)
		}
	case *rsa.PublicKey:
		if k.N.BitLen() < 2048 {
			return refuse(KindInvalid, ReasonKeyType, "CSR key is RSA %d bits; use at least 2048 (or ECDSA P-256)", k.N.BitLen())
		}
		if k.N.BitLen() > 8192 {
			return refuse(KindInvalid, ReasonKeyType, "CSR key is RSA %d bits; at most 8192 is accepted", k.N.BitLen())
		}
	default:
		return refuse(KindInvalid, ReasonKeyType, "CSR key type %T is not accepted; use ECDSA P-256/P-384 or RSA >= 2048", csr.PublicKey)
	}
	for _, ext := range csr.Extensions {
		if ext.Id.Equal(oidBasicConstraints) {
			var bc struct {
				IsCA       bool `asn1:"optional"`
				MaxPathLen int  `asn1:"optional,default:-1"`
			}
			if _, err := asn1.Unmarshal(ext.Value, &bc); err != nil {
				return refuse(KindInvalid, ReasonBadCSR, "CSR basicConstraints extension is malformed: %v", err)
			}
			if bc.IsCA {
				return refuse(KindInvalid, ReasonCARequested, "CSR asks for CA:TRUE; workload certificates are never CAs")
			}
		}
	}
	if n := len(csr.DNSNames) + len(csr.IPAddresses) + len(csr.EmailAddresses); n > 0 {
		return refuse(KindInvalid, ReasonExtraSAN, "CSR asks for %d non-URI SANs (DNS %q, IP %v, email %q); workload certificates carry only the SPIFFE ID",
			n, csr.DNSNames, csr.IPAddresses, csr.EmailAddresses)
	}
	switch len(csr.URIs) {
	case 0:
		// The CA fills in the caller's ID.
	case 1:
		u := csr.URIs[0].String()
		if u != id.String() {
			if other, err := identity.Parse(u); err == nil && other.TrustDomain != id.TrustDomain {
				return refuse(KindDenied, ReasonForeignTrustDomain, "CSR asks for %s in trust domain %q; this CA signs only %q (you proved %s)", u, other.TrustDomain, id.TrustDomain, id)
			}
			return refuse(KindDenied, ReasonIdentityMismatch, "CSR asks for %q but the caller proved %s; ask for that ID or leave the URI SAN empty", u, id)
		}
	default:
		return refuse(KindInvalid, ReasonMultipleURIs, "CSR has %d URI SANs; a workload certificate has exactly one (the SPIFFE ID)", len(csr.URIs))
	}
	// Any SAN form Go does not decode (otherName, registeredID, ...) shows
	// up only in the raw extension: count its entries against what we saw.
	for _, ext := range csr.Extensions {
		if !ext.Id.Equal(oidSubjectAltName) {
			continue
		}
		var names []asn1.RawValue
		if rest, err := asn1.Unmarshal(ext.Value, &names); err != nil || len(rest) > 0 {
			return refuse(KindInvalid, ReasonBadCSR, "CSR subjectAltName extension is malformed")
		}
		if len(names) != len(csr.URIs) {
			return refuse(KindInvalid, ReasonExtraSAN, "CSR subjectAltName has %d entries of kinds meshauth does not sign; send only the SPIFFE ID URI", len(names)-len(csr.URIs))
		}
	}
	if err := csr.CheckSignature(); err != nil {
		return refuse(KindInvalid, ReasonBadSignature, "CSR signature does not verify with its own public key (%v): the CSR was altered or signed with another key", err)
	}
	return nil
}

// checkTTL turns a requested TTL into the one to use.
func (c *CA) checkTTL(ttl time.Duration) (time.Duration, error) {
	switch {
	case ttl == 0:
		return c.cfg.DefaultTTL, nil
	case ttl < 0:
		return 0, refuse(KindInvalid, ReasonTTL, "requested TTL %s is negative", ttl)
	case ttl < time.Minute:
		return 0, refuse(KindInvalid, ReasonTTL, "requested TTL %s is under the 1m minimum", ttl)
	case ttl > c.cfg.MaxTTL:
		return 0, refuse(KindInvalid, ReasonTTL, "requested TTL %s is over the maximum %s (meshd control --max-ttl)", ttl, c.cfg.MaxTTL)
	}
	return ttl, nil
}
