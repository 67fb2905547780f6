package ca

import "time"

// Store keeps what the CA records, whatever Backend holds its keys: the
// bundle version, the issuance log, revocations and join tokens. The
// default is the bbolt file DIR/ca.db (OpenStore); on Kubernetes,
// internal/kube's SecretStore keeps the bundle version and revocations in
// a Secret every replica reads and writes, and the rest in the bbolt file.
//
// The CA reads BundleVersion before Revocations when it builds a bundle: a
// shared store that changes between the two calls then yields an older
// version with newer revocations, which the next Refresh corrects, never a
// newer version with older revocations. Methods that refuse for
// a reason a caller should see (an unknown serial, a spent token) return
// an *Error; everything else is an internal error.
type Store interface {
	// TrustDomain returns the trust domain the store was created for,
	// recording want if it is new.
	TrustDomain(want string) (string, error)
	// BundleVersion is the current bundle version; Bump increments it.
	BundleVersion() (uint64, error)
	Bump() (uint64, error)

	// RecordIssuance commits rec (keyed by serial) and, if tokenHash is
	// set, spends one use of that join token, in one durable transaction.
	// ErrSerialExists if the serial is already logged.
	RecordIssuance(rec *IssuanceRecord, serial []byte, tokenHash string, now time.Time) error
	// IssuedRecord returns the log record of a serial (nil if unknown).
	IssuedRecord(serial string) (*IssuanceRecord, error)
	// Issued returns the whole log.
	Issued() ([]IssuanceRecord, error)
	// MaxNotAfter is, per authority ID, the latest NotAfter it signed.
	MaxNotAfter() (map[uint64]int64, error)
	// PruneIssued deletes up to max records that expired before cutoff.
	PruneIssued(cutoff int64, max int) (int, error)
	// Counts of issued certificates, revocations and join tokens.
	Counts() (issued, revoked, tokens int, err error)

	// Revocations returns the revocation list.
	Revocations() ([]Revocation, error)
	// Revoke revokes serial, or every certificate of spiffeID, and the
	// certificates renewed from them (see Lineage), and bumps the bundle
	// version, in one durable write: after it returns, RecordIssuance
	// refuses any renewal from a revoked serial. serial is lowercase hex.
	// A store that only this CA writes refuses an unknown serial or
	// identity (KindNotFound); a store shared by replicas that each keep
	// their own issuance log accepts one that another replica may have
	// signed (internal/kube's SecretStore).
	Revoke(serial, spiffeID, reason string, now time.Time) (added []Revocation, version uint64, err error)
	// PruneRevocations drops revocations of expired certificates.
	PruneRevocations(now time.Time) (n int, version uint64, err error)

	// PutToken stores a join token under the hash of its secret; GetToken
	// reads it (an *Error if unknown).
	PutToken(hash string, r *TokenRecord) error
	GetToken(hash string) (*TokenRecord, error)

	// Rotation is the root rotation in progress or the last one (nil if
	// none); PutRotation replaces it (rotation.go).
	Rotation() (*RotationRecord, error)
	PutRotation(r *RotationRecord) error
	// Sidecars are the fleet's records (fleet.go); PutSidecar writes one
	// by its Key, DeleteSidecar drops one.
	Sidecars() ([]SidecarRecord, error)
	PutSidecar(r *SidecarRecord) error
	DeleteSidecar(key string) error

	Close() error
}

// SharedStore is implemented by a Store that several CA replicas share
// (internal/kube's SecretStore): the CA then reads the sidecar records of
// the other replicas from it, not only its own.
type SharedStore interface {
	SharedByReplicas() bool
}

// OpenStore opens (or creates) the bbolt store DIR/ca.db, the default
// Store. A Store shared by CA replicas wraps it for what each replica
// keeps for itself (internal/kube's SecretStore: the issuance log and join
// tokens).
func OpenStore(dir string) (Store, error) {
	s, err := openStore(dir)
	if err != nil {
		return nil, err
	}
	return s, nil
}

var _ Store = (*store)(nil)
