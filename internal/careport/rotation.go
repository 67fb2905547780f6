package careport

import "time"

// The phases of a root rotation (Rotation.Phase), in order.
const (
	// PhaseDistributing: the new root is in every bundle and does not sign
	// yet; the CA waits until every sidecar has ACKed a bundle holding it.
	PhaseDistributing = "distributing"
	// PhaseReissuing: the new root signs; workloads re-issue at their own
	// pace; the old roots stay while a live certificate chains to them.
	PhaseReissuing = "reissuing"
	// PhaseDone: the old roots have left the bundle.
	PhaseDone = "done"
)

// Rotation is a root rotation's progress, for `meshctl ca rotation status`.
type Rotation struct {
	// Phase is "" when the CA has never rotated its root.
	Phase    string   `json:"phase"`
	NewRoot  string   `json:"newRoot,omitempty"`  // SHA-256 of the new root
	OldRoots []string `json:"oldRoots,omitempty"` // SHA-256 of the roots it replaces
	// BundleVersion is the first bundle version that holds the new root.
	BundleVersion uint64    `json:"bundleVersion,omitempty"`
	StartedAt     time.Time `json:"startedAt,omitzero"`
	// MinOverlapUntil: signing does not switch before this, even when
	// every sidecar has ACKed.
	MinOverlapUntil time.Time `json:"minOverlapUntil,omitzero"`
	SwitchedAt      time.Time `json:"switchedAt,omitzero"`
	RetiredAt       time.Time `json:"retiredAt,omitzero"`
	// Forced lists what a forced retirement left without a trusted root
	// (identity and serial of each live certificate).
	Forced []string `json:"forced,omitempty"`
	// Sidecars are every sidecar the CA knows on its bundle stream.
	Sidecars []SidecarAck `json:"sidecars"`
	// Waiting counts the sidecars that hold the signing switch back.
	Waiting int `json:"waiting"`
	// Live counts, per root, the unexpired, unrevoked certificates in the
	// issuance log that chain to it.
	Live []RootLive `json:"live"`
	// Next says what the CA waits for, in words.
	Next string    `json:"next"`
	Now  time.Time `json:"now"`
}

// SidecarAck is one sidecar (one certificate lineage and instance name) as
// the CA knows it from its bundle stream.
type SidecarAck struct {
	// Key is the lineage's first serial and the instance name.
	Key      string `json:"key"`
	SPIFFEID string `json:"spiffeID"`
	Instance string `json:"instance,omitempty"`
	// Serial of the certificate it last presented; CertNotAfter its end.
	Serial       string    `json:"serial"`
	CertNotAfter time.Time `json:"certNotAfter"`
	Connected    bool      `json:"connected"`
	// Since: connected since, or disconnected since.
	Since        time.Time `json:"since"`
	AckedVersion uint64    `json:"ackedVersion"`
	AckedAt      time.Time `json:"ackedAt,omitzero"`
	// HasNewRoot: its last ACKed bundle holds the rotation's new root.
	HasNewRoot bool `json:"hasNewRoot"`
	// Error is the install error it last reported (NACK), for ErrorVersion.
	Error        string `json:"error,omitempty"`
	ErrorVersion uint64 `json:"errorVersion,omitempty"`
	// Blocking: it holds the signing switch back; Why says why.
	Blocking bool   `json:"blocking"`
	Why      string `json:"why"`
}

// RootLive counts the live certificates that chain to one root.
type RootLive struct {
	Root  string `json:"root"` // SHA-256
	State string `json:"state"`
	Live  int    `json:"live"`
	// Sample names some of them: "<spiffe id> serial <hex>".
	Sample []string `json:"sample,omitempty"`
}
