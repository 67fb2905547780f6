package ca

import (
	"errors"
	"fmt"
)

// Kind says what class of failure an Error is, so the API layer can map it
// to a status code without knowing every reason.
type Kind int

const (
	// KindInternal is a failure of the CA itself (store, signing).
	KindInternal Kind = iota
	// KindInvalid is a malformed or unacceptable request (bad CSR, TTL).
	KindInvalid
	// KindUnauthenticated means the caller proved no identity.
	KindUnauthenticated
	// KindDenied means the caller proved an identity but may not have what it asked.
	KindDenied
	// KindNotFound is an unknown serial or identity.
	KindNotFound
	// KindFailedPrecondition is a request the CA cannot do in its current
	// mode (e.g. rotating a plugged-in root).
	KindFailedPrecondition
)

// Error is a refusal with a constant Reason (for metrics and tests) and a
// message that tells the caller what was wrong and what to do. The wrapped
// cause may hold internals and is logged, not sent to the caller, for
// KindInternal.
type Error struct {
	Kind   Kind
	Reason string
	Msg    string
	Err    error
}

func (e *Error) Error() string {
	if e.Err != nil && e.Kind == KindInternal {
		return fmt.Sprintf("ca: %s: %v", e.Msg, e.Err)
	}
	return "ca: " + e.Msg
}

func (e *Error) Unwrap() error { return e.Err }

// Is makes errors.Is(err, ErrReason("x")) style checks possible through the
// Reason sentinels below.
func (e *Error) Is(target error) bool {
	var r reasonErr
	if errors.As(target, &r) {
		return e.Reason == string(r)
	}
	return false
}

// reasonErr is a sentinel that matches any *Error with the same Reason.
type reasonErr string

func (r reasonErr) Error() string { return "ca: " + string(r) }

// Reason sentinels: errors.Is(err, ca.ErrBadSignature) is true for every
// refusal with that reason, whatever its message.
var (
	ErrBadCSR            error = reasonErr(ReasonBadCSR)
	ErrBadSignature      error = reasonErr(ReasonBadSignature)
	ErrKeyType           error = reasonErr(ReasonKeyType)
	ErrIdentityMismatch  error = reasonErr(ReasonIdentityMismatch)
	ErrForeignDomain     error = reasonErr(ReasonForeignTrustDomain)
	ErrMultipleURIs      error = reasonErr(ReasonMultipleURIs)
	ErrExtraSAN          error = reasonErr(ReasonExtraSAN)
	ErrCARequested       error = reasonErr(ReasonCARequested)
	ErrTTL               error = reasonErr(ReasonTTL)
	ErrUnauthenticated   error = reasonErr(ReasonUnauthenticated)
	ErrTokenUnknown      error = reasonErr(ReasonTokenUnknown)
	ErrTokenExpired      error = reasonErr(ReasonTokenExpired)
	ErrTokenUsedUp       error = reasonErr(ReasonTokenUsedUp)
	ErrCallerCertInvalid error = reasonErr(ReasonCallerCert)
)

// Reasons, as they appear in the metrics label and in gRPC error details.
const (
	ReasonBadCSR             = "bad_csr"
	ReasonBadSignature       = "bad_signature"
	ReasonKeyType            = "key_type"
	ReasonIdentityMismatch   = "identity_mismatch"
	ReasonForeignTrustDomain = "foreign_trust_domain"
	ReasonMultipleURIs       = "multiple_uris"
	ReasonExtraSAN           = "extra_san"
	ReasonCARequested        = "ca_requested"
	ReasonTTL                = "ttl"
	ReasonUnauthenticated    = "unauthenticated"
	ReasonTokenUnknown       = "token_unknown"
	ReasonTokenExpired       = "token_expired"
	ReasonTokenUsedUp        = "token_used_up"
	ReasonCallerCert         = "caller_cert_invalid"
	ReasonInternal           = "internal"
	ReasonReservedIdentity   = "reserved_identity"
)

func refuse(kind Kind, reason, format string, args ...any) *Error {
	return &Error{Kind: kind, Reason: reason, Msg: fmt.Sprintf(format, args...)}
}

func internal(msg string, err error) *Error {
	return &Error{Kind: KindInternal, Reason: ReasonInternal, Msg: msg, Err: err}
}

// ReasonOf returns the Reason of err, "ok" for nil and "internal" for errors
// that are not *Error.
func ReasonOf(err error) string {
	if err == nil {
		return "ok"
	}
	var e *Error
	if errors.As(err, &e) {
		return e.Reason
	}
	return ReasonInternal
}
