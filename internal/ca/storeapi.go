package ca

import "time"

// Store keeps what the CA records, whatever Backend holds its keys: the
// bundle version, the issuance log, revocations and join tokens. The
// default is the bbolt file DIR/ca.db (openStore). Methods that refuse for
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
	// certificates renewed from them; it bumps the bundle version.
	Revoke(serial, spiffeID, reason string, now time.Time) (added []Revocation, version uint64, err error)
	// ImportRevocations adds revocations made elsewhere (another replica).
	ImportRevocations(rs []Revocation, now time.Time) (added []Revocation, version uint64, err error)
	// PruneRevocations drops revocations of expired certificates.
	PruneRevocations(now time.Time) (n int, version uint64, err error)

	// PutToken stores a join token under the hash of its secret; GetToken
	// reads it (an *Error if unknown).
	PutToken(hash string, r *TokenRecord) error
	GetToken(hash string) (*TokenRecord, error)

	Close() error
}

var _ Store = (*store)(nil)
