// Package careport holds what the CA reports about itself to operators:
// its status (roots, the signing certificate, counts) and the entries of
// its issuance log. internal/ca fills them, internal/meshapi carries them
// over the Admin API as typed protobuf, and meshctl prints them (text, or
// these types' JSON for -o json). The package imports only the standard
// library, so meshctl reads the CA's reports without linking the CA.
package careport

import (
	"strings"
	"time"
)

// Status describes the CA for `meshctl ca status`.
type Status struct {
	TrustDomain   string       `json:"trustDomain"`
	Mode          string       `json:"mode"` // the backend's name: "self-signed", "plugged-in", ...
	BundleVersion uint64       `json:"bundleVersion"`
	Roots         []RootStatus `json:"roots"`
	Signing       CertStatus   `json:"signing"`
	Issued        int          `json:"issued"`
	Revoked       int          `json:"revoked"`
	JoinTokens    int          `json:"joinTokens"`
	DefaultTTL    string       `json:"defaultTTL"` // a time.Duration's String
	MaxTTL        string       `json:"maxTTL"`
	Now           time.Time    `json:"now"`
}

// The states of a root in a rotation (RootStatus.State).
const (
	RootSigning  = "signing"
	RootPending  = "pending"
	RootRetiring = "retiring"
)

// RootStatus is one root in the bundle.
type RootStatus struct {
	CertStatus
	// State: RootSigning, RootPending (trusted, signs from ActivateAt) or
	// RootRetiring (trusted until LastIssuedNotAfter).
	State              string    `json:"state"`
	ActivateAt         time.Time `json:"activateAt"`
	LastIssuedNotAfter time.Time `json:"lastIssuedNotAfter,omitzero"`
}

// CertStatus names a CA certificate.
type CertStatus struct {
	Subject     string    `json:"subject"`
	Fingerprint string    `json:"sha256"`
	NotBefore   time.Time `json:"notBefore"`
	NotAfter    time.Time `json:"notAfter"`
}

// IssuanceRecord is one line of the CA's issuance log, as the CA store
// keeps it (internal/ca.IssuanceRecord is this type; its JSON is the
// store's format).
type IssuanceRecord struct {
	Serial    string `json:"serial"`
	SPIFFEID  string `json:"spiffe_id"`
	NotBefore int64  `json:"not_before"`
	NotAfter  int64  `json:"not_after"`
	IssuedAt  int64  `json:"issued_at"`
	// Requester says who asked and how they proved it, e.g.
	// "join_token:3f2a9c1b0d4e" or "mtls:<serial of the presented cert>".
	Requester string `json:"requester"`
	Authority uint64 `json:"authority"`
	// GrantedTTL (seconds) is the longest lifetime a renewal of this
	// certificate may ask for: fixed when its lineage started (a join
	// token, a ServiceAccount token) as the larger of the CA's default TTL
	// and the TTL that first issuance asked for, and handed down unchanged
	// to every certificate renewed from it. 0 in records written before it
	// existed (see internal/ca's CA.renewalLimit).
	GrantedTTL int64 `json:"granted_ttl,omitempty"`
}

// RenewedFrom returns the serial of the certificate the caller presented
// to get this one (an mTLS renewal), or "" when the record starts a
// lineage. The requester field holds it ("mtls:<serial>").
func (r *IssuanceRecord) RenewedFrom() string {
	s, ok := strings.CutPrefix(r.Requester, "mtls:")
	if !ok {
		return ""
	}
	return s
}

// IssuedEntry is one issuance log record with its revocation, for audits.
type IssuedEntry struct {
	IssuanceRecord
	Revoked       bool   `json:"revoked,omitempty"`
	RevokedReason string `json:"revoked_reason,omitempty"`
}
