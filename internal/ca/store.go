package ca

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/meshauth/meshauth/internal/careport"
	bolt "go.etcd.io/bbolt"
)

// The CA store is one bbolt file, DIR/ca.db, mode 0600 because it holds the
// signing keys. Every change that a caller is told about is committed (and
// fsynced) before the call returns: an issued certificate is in the log
// before its bytes leave the CA, so after a crash the log holds at least
// every certificate any client received, and a serial is never reused
// because the log is checked for it inside the committing transaction.
var (
	bucketMeta        = []byte("meta")
	bucketAuthorities = []byte("authorities")
	bucketMaxNotAfter = []byte("authority_max_not_after")
	bucketIssued      = []byte("issued")
	bucketRevoked     = []byte("revoked")
	bucketTokens      = []byte("join_tokens")
	bucketSidecars    = []byte("sidecars")

	keyBundleVersion = []byte("bundle_version")
	keyTrustDomain   = []byte("trust_domain")
	keyRotation      = []byte("rotation")
)

var ErrSerialExists = errors.New("ca: serial already in the issuance log")

// IssuanceRecord is one line of the issuance log. The type lives in
// internal/careport, so that the log's entries reach meshctl (ListIssued)
// without meshctl linking the CA.
type IssuanceRecord = careport.IssuanceRecord

// appendIssuanceJSON appends the record as encoding/json would write it
// (same field names and order, so json.Unmarshal reads it back), without
// reflection: it runs once per issuance.
func appendIssuanceJSON(b []byte, r *IssuanceRecord) []byte {
	b = append(b, `{"serial":`...)
	b = appendJSONString(b, r.Serial)
	b = append(b, `,"spiffe_id":`...)
	b = appendJSONString(b, r.SPIFFEID)
	b = append(b, `,"not_before":`...)
	b = strconv.AppendInt(b, r.NotBefore, 10)
	b = append(b, `,"not_after":`...)
	b = strconv.AppendInt(b, r.NotAfter, 10)
	b = append(b, `,"issued_at":`...)
	b = strconv.AppendInt(b, r.IssuedAt, 10)
	b = append(b, `,"requester":`...)
	b = appendJSONString(b, r.Requester)
	b = append(b, `,"authority":`...)
	b = strconv.AppendUint(b, r.Authority, 10)
	if r.GrantedTTL != 0 {
		b = append(b, `,"granted_ttl":`...)
		b = strconv.AppendInt(b, r.GrantedTTL, 10)
	}
	return append(b, '}')
}

// appendJSONString appends s as a JSON string. Serials, SPIFFE IDs and
// requesters are plain ASCII; anything else goes through encoding/json.
func appendJSONString(b []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c > 0x7e || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
			q, _ := json.Marshal(s)
			return append(b, q...)
		}
	}
	b = append(b, '"')
	b = append(b, s...)
	return append(b, '"')
}

// authorityRecord is a self-signed root the CA created. Plugged-in CAs are
// read from their files on every start and never copied into the store.
type authorityRecord struct {
	ID         uint64    `json:"id"`
	CertDER    []byte    `json:"cert_der"`
	KeyDER     []byte    `json:"key_der"` // PKCS#8
	ActivateAt time.Time `json:"activate_at"`
	CreatedAt  time.Time `json:"created_at"`
}

// TokenRecord is a join token, stored under the SHA-256 of its secret.
type TokenRecord struct {
	ID        string    `json:"id"`
	SPIFFEID  string    `json:"spiffe_id"`
	ExpiresAt time.Time `json:"expires_at"`
	Uses      int       `json:"uses"`
	Used      int       `json:"used"`
	CreatedAt time.Time `json:"created_at"`
}

type store struct {
	db *bolt.DB

	// tokens caches join token records read from or committed to the
	// store, so the join-token authenticator's check needs no read
	// transaction per call. It is only a pre-check: the use is spent by
	// spendToken inside the transaction that logs the issuance, from the
	// durable record, which stays authoritative. A cached record is never
	// ahead of the store (Used is only ever set from committed values), so
	// the cache can let through a call that spendToken then refuses, never
	// the reverse; after a restart it is rebuilt from the store.
	tokMu  sync.Mutex
	tokens map[string]TokenRecord
	// spendMemo: see spendToken.
	spendMemo map[string]spendMemo
}

func openStore(dir string) (*store, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create state dir %s: %w", dir, err)
	}
	path := filepath.Join(dir, "ca.db")
	// The timeout turns "another meshd holds the lock" into an error instead
	// of a hang.
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: 2 * time.Second})
	if err != nil {
		if errors.Is(err, bolt.ErrTimeout) {
			return nil, fmt.Errorf("open %s: locked by another process (is another meshd control running on this dir?)", path)
		}
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	// A file that existed with looser permissions is tightened: it holds keys.
	if err := os.Chmod(path, 0o600); err != nil {
		db.Close()
		return nil, fmt.Errorf("chmod %s: %w", path, err)
	}
	// Group concurrent issuances into one fsynced transaction. Callers still
	// wait for the commit; the delay only bounds how long a lone caller waits
	// for company.
	db.MaxBatchDelay = 5 * time.Millisecond
	db.MaxBatchSize = 512
	err = db.Update(func(tx *bolt.Tx) error {
		for _, b := range [][]byte{bucketMeta, bucketAuthorities, bucketMaxNotAfter, bucketIssued, bucketRevoked, bucketTokens, bucketSidecars} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("init %s: %w", path, err)
	}
	return &store{db: db, tokens: map[string]TokenRecord{}, spendMemo: map[string]spendMemo{}}, nil
}

func (s *store) Close() error { return s.db.Close() }

func u64(b []byte) uint64 {
	if len(b) != 8 {
		return 0
	}
	return binary.BigEndian.Uint64(b)
}

func u64b(v uint64) []byte {
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], v)
	return b[:]
}

// bumpVersion increments the bundle version inside tx and returns the new one.
func bumpVersion(tx *bolt.Tx) (uint64, error) {
	m := tx.Bucket(bucketMeta)
	v := u64(m.Get(keyBundleVersion)) + 1
	return v, m.Put(keyBundleVersion, u64b(v))
}

func (s *store) BundleVersion() (v uint64, err error) {
	err = s.db.View(func(tx *bolt.Tx) error {
		v = u64(tx.Bucket(bucketMeta).Get(keyBundleVersion))
		return nil
	})
	return v, err
}

// trustDomain returns the stored trust domain, storing td if none is.
func (s *store) TrustDomain(td string) (stored string, err error) {
	err = s.db.Update(func(tx *bolt.Tx) error {
		m := tx.Bucket(bucketMeta)
		if v := m.Get(keyTrustDomain); v != nil {
			stored = string(v)
			return nil
		}
		stored = td
		return m.Put(keyTrustDomain, []byte(td))
	})
	return stored, err
}

func (s *store) authorities() (out []authorityRecord, err error) {
	err = s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketAuthorities).ForEach(func(k, v []byte) error {
			var r authorityRecord
			if err := json.Unmarshal(v, &r); err != nil {
				return fmt.Errorf("authority %d: %w", u64(k), err)
			}
			out = append(out, r)
			return nil
		})
	})
	return out, err
}

// putAuthority stores a new root. The caller bumps the bundle version first
// (a bump without a change is harmless; a change without a bump is not).
func (s *store) putAuthority(r *authorityRecord) error {
	return s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketAuthorities)
		id, err := b.NextSequence()
		if err != nil {
			return err
		}
		r.ID = id
		v, err := json.Marshal(r)
		if err != nil {
			return err
		}
		return b.Put(u64b(id), v)
	})
}

// retireAuthority removes a root from the store (and so from the bundle).
// The caller bumps the bundle version after.
func (s *store) retireAuthority(id uint64) error {
	return s.db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketAuthorities).Delete(u64b(id))
	})
}

// activateAuthority sets when a root starts signing.
func (s *store) activateAuthority(id uint64, at time.Time) error {
	return s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketAuthorities)
		v := b.Get(u64b(id))
		if v == nil {
			return fmt.Errorf("no root %d in the store", id)
		}
		var r authorityRecord
		if err := json.Unmarshal(v, &r); err != nil {
			return fmt.Errorf("authority %d: %w", id, err)
		}
		r.ActivateAt = at
		nv, err := json.Marshal(&r)
		if err != nil {
			return err
		}
		return b.Put(u64b(id), nv)
	})
}

func (s *store) MaxNotAfter() (map[uint64]int64, error) {
	out := map[uint64]int64{}
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketMaxNotAfter).ForEach(func(k, v []byte) error {
			out[u64(k)] = int64(u64(v))
			return nil
		})
	})
	return out, err
}

// recordIssuance commits one issuance log record, spending one use of a
// join token if tokenHash is set, in one transaction grouped with concurrent
// callers (bbolt Batch). It returns only after the commit.
//
// A renewal (rec.RenewedFrom() set) is refused if the certificate it was
// authenticated with has been revoked by now. Revocations are written in
// transactions of the same store, so a renewal racing with the revocation
// of its parent either commits first, and the revocation's lineage scan
// (store.Revoke) finds and revokes it, or commits after and is refused
// here: no certificate renewed from a revoked one escapes.
func (s *store) RecordIssuance(rec *IssuanceRecord, serial []byte, tokenHash string, now time.Time) error {
	val := appendIssuanceJSON(make([]byte, 0, 256), rec)
	parent := rec.RenewedFrom()
	// spent is the token record as the last run of fn wrote it: bbolt may
	// run fn more than once, and only the run that commits counts.
	var spent TokenRecord
	err := s.db.Batch(func(tx *bolt.Tx) error {
		issued := tx.Bucket(bucketIssued)
		if issued.Get(serial) != nil {
			return ErrSerialExists
		}
		if parent != "" && tx.Bucket(bucketRevoked).Get([]byte(parent)) != nil {
			return refuse(KindUnauthenticated, ReasonCallerCert, "client certificate refused (revoked): serial %s was revoked while this renewal was in flight", parent)
		}
		if tokenHash != "" {
			r, err := s.spendToken(tx, tokenHash, now)
			if r != nil {
				spent = *r
			}
			if err != nil {
				return err
			}
		}
		if err := issued.Put(serial, val); err != nil {
			return err
		}
		mb := tx.Bucket(bucketMaxNotAfter)
		if u64(mb.Get(u64b(rec.Authority))) < uint64(rec.NotAfter) {
			return mb.Put(u64b(rec.Authority), u64b(uint64(rec.NotAfter)))
		}
		return nil
	})
	if tokenHash != "" && spent.ID != "" {
		var e *Error
		if err == nil || (errors.As(err, &e) && e.Reason == ReasonTokenUsedUp) {
			// Committed (or the store said used up, a state that never
			// reverts): later callers with this token are pre-checked
			// against it.
			s.cacheToken(tokenHash, spent)
		}
	}
	return err
}

// cacheToken records r as the latest known state of a token. Concurrent
// commits can report out of order, so Used only ever grows.
func (s *store) cacheToken(hash string, r TokenRecord) {
	s.tokMu.Lock()
	if old, ok := s.tokens[hash]; ok && old.Used > r.Used {
		r.Used = old.Used
	} else if !ok && len(s.tokens) >= maxCachedTokens {
		// Crude bound, as VerifyPeer's cache: a miss only costs one read.
		clear(s.tokens)
	}
	s.tokens[hash] = r
	s.tokMu.Unlock()
}

// maxCachedTokens bounds store.tokens: tokens are never deleted from the
// store, so a CA that has seen many would otherwise keep them all in memory.
const maxCachedTokens = 4096

// issuedRecord returns the issuance log record of a serial (lowercase
// hex), or nil if the log does not hold it.
func (s *store) IssuedRecord(serial string) (*IssuanceRecord, error) {
	key, ok := serialBytes(serial)
	if !ok {
		return nil, nil
	}
	var rec *IssuanceRecord
	err := s.db.View(func(tx *bolt.Tx) error {
		v := tx.Bucket(bucketIssued).Get(key)
		if v == nil {
			return nil
		}
		rec = new(IssuanceRecord)
		return json.Unmarshal(v, rec)
	})
	return rec, err
}

// Issued returns every issuance log record, for tests and audits.
func (s *store) Issued() (out []IssuanceRecord, err error) {
	err = s.db.View(func(tx *bolt.Tx) error {
		return forEachIssued(tx, func(r IssuanceRecord) error { out = append(out, r); return nil })
	})
	return out, err
}

// forEachIssued calls f with every record of the issuance log.
func forEachIssued(tx *bolt.Tx, f func(IssuanceRecord) error) error {
	return tx.Bucket(bucketIssued).ForEach(func(k, v []byte) error {
		var r IssuanceRecord
		if err := json.Unmarshal(v, &r); err != nil {
			return fmt.Errorf("issuance %x: %w", k, err)
		}
		return f(r)
	})
}

func (s *store) Counts() (issued, revoked, tokens int, err error) {
	err = s.db.View(func(tx *bolt.Tx) error {
		issued = tx.Bucket(bucketIssued).Stats().KeyN
		revoked = tx.Bucket(bucketRevoked).Stats().KeyN
		tokens = tx.Bucket(bucketTokens).Stats().KeyN
		return nil
	})
	return
}

func (s *store) Revocations() (out []Revocation, err error) {
	err = s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketRevoked).ForEach(func(k, v []byte) error {
			var r Revocation
			if err := json.Unmarshal(v, &r); err != nil {
				return fmt.Errorf("revocation %s: %w", k, err)
			}
			out = append(out, r)
			return nil
		})
	})
	return out, err
}

// revoke marks serials revoked. With spiffeID set it revokes every logged,
// unexpired certificate of that identity; otherwise the one serial, which
// must be in the log. It returns the new revocations and bundle version.
func (s *store) Revoke(serial, spiffeID, reason string, now time.Time) (added []Revocation, version uint64, err error) {
	err = s.db.Update(func(tx *bolt.Tx) error {
		rb := tx.Bucket(bucketRevoked)
		add := func(rec IssuanceRecord) error {
			if rb.Get([]byte(rec.Serial)) != nil {
				return nil // already revoked
			}
			r := Revocation{Serial: rec.Serial, SPIFFEID: rec.SPIFFEID, NotAfter: time.Unix(rec.NotAfter, 0).UTC(), RevokedAt: now.UTC(), Reason: reason}
			v, err := json.Marshal(r)
			if err != nil {
				return err
			}
			added = append(added, r)
			return rb.Put([]byte(rec.Serial), v)
		}
		if serial != "" {
			key, ok := serialBytes(serial)
			if !ok {
				return refuse(KindInvalid, "bad_serial", "serial %q is not lowercase hex", serial)
			}
			v := tx.Bucket(bucketIssued).Get(key)
			if v == nil {
				return refuse(KindNotFound, "unknown_serial", "serial %s is not in the issuance log of this CA", serial)
			}
			var rec IssuanceRecord
			if err := json.Unmarshal(v, &rec); err != nil {
				return err
			}
			if err := add(rec); err != nil {
				return err
			}
			// Whoever holds the key of this certificate may have renewed
			// it: every certificate renewed from it, transitively, goes too.
			lin := Lineage{}
			if err := forEachIssued(tx, func(r IssuanceRecord) error { lin.Add(r); return nil }); err != nil {
				return err
			}
			root := Revocation{Serial: rec.Serial, Reason: reason}
			for _, r := range lin.Revocations([]Revocation{root}, func(s string) bool { return rb.Get([]byte(s)) != nil }, now) {
				v, err := json.Marshal(r)
				if err != nil {
					return err
				}
				added = append(added, r)
				if err := rb.Put([]byte(r.Serial), v); err != nil {
					return err
				}
			}
		} else {
			// A scan of the log: revoking an identity is a rare admin act,
			// and an index by identity would cost every issuance a second
			// random B+tree insert on the hot path.
			found := false
			err := forEachIssued(tx, func(rec IssuanceRecord) error {
				if rec.SPIFFEID != spiffeID {
					return nil
				}
				found = true
				if rec.NotAfter < now.Unix() {
					return nil // expired: nothing to revoke
				}
				return add(rec)
			})
			if err != nil {
				return err
			}
			if !found {
				return refuse(KindNotFound, "unknown_identity", "no certificate for %s is in the issuance log of this CA", spiffeID)
			}
		}
		if len(added) == 0 {
			version = u64(tx.Bucket(bucketMeta).Get(keyBundleVersion))
			return nil
		}
		version, err = bumpVersion(tx)
		return err
	})
	return added, version, err
}

// pruneRevocations drops revocations of certificates that have expired:
// an expired certificate is refused anyway, and the list stays short.
func (s *store) PruneRevocations(now time.Time) (n int, version uint64, err error) {
	err = s.db.Update(func(tx *bolt.Tx) error {
		rb := tx.Bucket(bucketRevoked)
		var dead [][]byte
		err := rb.ForEach(func(k, v []byte) error {
			var r Revocation
			if json.Unmarshal(v, &r) == nil && r.NotAfter.Before(now) {
				dead = append(dead, append([]byte(nil), k...))
			}
			return nil
		})
		if err != nil {
			return err
		}
		for _, k := range dead {
			if err := rb.Delete(k); err != nil {
				return err
			}
		}
		n = len(dead)
		if n > 0 {
			version, err = bumpVersion(tx)
		}
		return err
	})
	return n, version, err
}

// setVersion bumps the bundle version for a change that has no record of
// its own (the signing root switching).
func (s *store) Bump() (version uint64, err error) {
	err = s.db.Update(func(tx *bolt.Tx) error {
		version, err = bumpVersion(tx)
		return err
	})
	return version, err
}

func (s *store) PutToken(hash string, r *TokenRecord) error {
	v, err := json.Marshal(r)
	if err != nil {
		return err
	}
	err = s.db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketTokens).Put([]byte(hash), v)
	})
	if err == nil {
		s.cacheToken(hash, *r)
	}
	return err
}

// getToken returns a token's record, from the cache if it has been seen
// (see store.tokens), else from the store. Unknown tokens are not cached:
// guessing costs a read each time, as before, and cannot grow the cache.
func (s *store) GetToken(hash string) (r *TokenRecord, err error) {
	s.tokMu.Lock()
	c, ok := s.tokens[hash]
	s.tokMu.Unlock()
	if ok {
		return &c, nil
	}
	err = s.db.View(func(tx *bolt.Tx) error {
		v := tx.Bucket(bucketTokens).Get([]byte(hash))
		if v == nil {
			return nil
		}
		r = new(TokenRecord)
		return json.Unmarshal(v, r)
	})
	if err == nil && r != nil {
		s.cacheToken(hash, *r)
	}
	return r, err
}

// spendToken checks and spends one use of a join token inside tx, so that
// the use and the issuance it paid for commit together. It returns the
// record as stored (after the spend), or as found when it refuses.
func (s *store) spendToken(tx *bolt.Tx, hash string, now time.Time) (*TokenRecord, error) {
	b := tx.Bucket(bucketTokens)
	v := b.Get([]byte(hash))
	if v == nil {
		return nil, refuse(KindUnauthenticated, ReasonTokenUnknown, "join token is not known to this CA (create one with `meshctl token create`)")
	}
	// Decoding is memoised on the exact stored bytes: a busy token is
	// spent many times per batch, and each spend reads what the previous
	// one wrote. Equal bytes decode to an equal record, so this changes
	// nothing about what is checked.
	var r TokenRecord
	if m, ok := s.spendMemo[hash]; ok && bytes.Equal(m.raw, v) {
		r = m.rec
	} else if err := json.Unmarshal(v, &r); err != nil {
		return nil, err
	}
	if err := r.usable(now); err != nil {
		return &r, err
	}
	r.Used++
	nv, err := r.appendJSON(make([]byte, 0, 192))
	if err != nil {
		return nil, err
	}
	if err := b.Put([]byte(hash), nv); err != nil {
		return nil, err
	}
	// Only the writer transaction runs spendToken, so s.spendMemo needs no
	// lock; bbolt keeps nv as the value (until commit copies it), and it
	// is not modified after this.
	if len(s.spendMemo) >= 1024 {
		clear(s.spendMemo)
	}
	s.spendMemo[hash] = spendMemo{raw: nv, rec: r}
	return &r, nil
}

type spendMemo struct {
	raw []byte
	rec TokenRecord
}

// appendJSON appends the record as encoding/json writes it, without
// reflection (a spend rewrites it once per issuance).
func (r *TokenRecord) appendJSON(b []byte) ([]byte, error) {
	exp, err := r.ExpiresAt.MarshalJSON()
	if err != nil {
		return nil, err
	}
	created, err := r.CreatedAt.MarshalJSON()
	if err != nil {
		return nil, err
	}
	b = append(b, `{"id":`...)
	b = appendJSONString(b, r.ID)
	b = append(b, `,"spiffe_id":`...)
	b = appendJSONString(b, r.SPIFFEID)
	b = append(b, `,"expires_at":`...)
	b = append(b, exp...)
	b = append(b, `,"uses":`...)
	b = strconv.AppendInt(b, int64(r.Uses), 10)
	b = append(b, `,"used":`...)
	b = strconv.AppendInt(b, int64(r.Used), 10)
	b = append(b, `,"created_at":`...)
	b = append(b, created...)
	return append(b, '}'), nil
}

func (r *TokenRecord) usable(now time.Time) error {
	if !now.Before(r.ExpiresAt) {
		return refuse(KindUnauthenticated, ReasonTokenExpired, "join token %s expired at %s; create a new one with `meshctl token create`", r.ID, r.ExpiresAt.UTC().Format(time.RFC3339))
	}
	if r.Used >= r.Uses {
		return refuse(KindUnauthenticated, ReasonTokenUsedUp, "join token %s has been used %d of %d times; create a new one with `meshctl token create`", r.ID, r.Used, r.Uses)
	}
	return nil
}

// pruneIssued deletes up to max issuance log records whose certificate
// expired before cutoff (Unix seconds). A pruned certificate had long
// expired: nothing can renew with it, revoke it or be verified with it.
func (s *store) PruneIssued(cutoff int64, max int) (n int, err error) {
	var dead [][]byte
	err = s.db.View(func(tx *bolt.Tx) error {
		cur := tx.Bucket(bucketIssued).Cursor()
		for k, v := cur.First(); k != nil && len(dead) < max; k, v = cur.Next() {
			var r IssuanceRecord
			if err := json.Unmarshal(v, &r); err != nil {
				return fmt.Errorf("issuance %x: %w", k, err)
			}
			if r.NotAfter < cutoff {
				dead = append(dead, append([]byte(nil), k...))
			}
		}
		return nil
	})
	if err != nil || len(dead) == 0 {
		return 0, err
	}
	err = s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketIssued)
		for _, k := range dead {
			if err := b.Delete(k); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return 0, err
	}
	return len(dead), nil
}

func (s *store) Rotation() (r *RotationRecord, err error) {
	err = s.db.View(func(tx *bolt.Tx) error {
		v := tx.Bucket(bucketMeta).Get(keyRotation)
		if v == nil {
			return nil
		}
		r = &RotationRecord{}
		return json.Unmarshal(v, r)
	})
	return r, err
}

func (s *store) PutRotation(r *RotationRecord) error {
	v, err := json.Marshal(r)
	if err != nil {
		return err
	}
	return s.db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucketMeta).Put(keyRotation, v) })
}

func (s *store) Sidecars() (out []SidecarRecord, err error) {
	err = s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketSidecars).ForEach(func(k, v []byte) error {
			var r SidecarRecord
			if err := json.Unmarshal(v, &r); err != nil {
				return fmt.Errorf("sidecar record %q: %w", k, err)
			}
			out = append(out, r)
			return nil
		})
	})
	return out, err
}

// PutSidecar writes one sidecar record; concurrent writers share one
// fsynced transaction (bbolt Batch), as issuances do.
func (s *store) PutSidecar(r *SidecarRecord) error {
	v, err := json.Marshal(r)
	if err != nil {
		return err
	}
	return s.db.Batch(func(tx *bolt.Tx) error { return tx.Bucket(bucketSidecars).Put([]byte(r.Key), v) })
}

func (s *store) DeleteSidecar(key string) error {
	return s.db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucketSidecars).Delete([]byte(key)) })
}
