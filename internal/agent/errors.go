package agent

import (
	"context"
	"errors"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Permanent reports whether a certificate request failed for a reason that
// asking again the same way cannot fix: the CA refused the request itself
// (InvalidArgument: a TTL over its maximum, a bad CSR), refused the
// credential (Unauthenticated: an unknown, expired or used-up join token, a
// revoked certificate; PermissionDenied: an identity the credential does not
// prove), or cannot do it at all (FailedPrecondition, Unimplemented,
// NotFound, OutOfRange, AlreadyExists), or the agent has no credential
// (ErrNoToken). Everything else is transient and retried with backoff: the
// CA unreachable or shutting down (Unavailable), slow (DeadlineExceeded),
// overloaded (ResourceExhausted, Aborted), or failing inside (Internal,
// Unknown), and errors that are not gRPC statuses (dial and TLS errors,
// a response the store refused).
func Permanent(err error) bool {
	if err == nil {
		return false
	}
	if errors.Is(err, ErrNoToken) {
		return true
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return false
	}
	st, ok := grpcStatus(err)
	if !ok {
		return false
	}
	switch st.Code() {
	case codes.InvalidArgument, codes.Unauthenticated, codes.PermissionDenied,
		codes.FailedPrecondition, codes.Unimplemented, codes.NotFound,
		codes.OutOfRange, codes.AlreadyExists:
		return true
	}
	return false
}

// callerRefused reports whether the CA refused the certificate the agent
// presented (revoked, expired, untrusted): then the bootstrap credential is
// the way back in.
func callerRefused(err error) bool {
	st, ok := grpcStatus(err)
	return ok && (st.Code() == codes.Unauthenticated || st.Code() == codes.PermissionDenied)
}

// caMessage is the CA's own message of a gRPC error (without the "rpc
// error: code = ... desc =" wrapping), or err's text.
func caMessage(err error) string {
	if st, ok := grpcStatus(err); ok && st.Code() != codes.OK {
		return st.Code().String() + ": " + st.Message()
	}
	return err.Error()
}

// grpcStatus finds the gRPC status err wraps, with its own message
// (status.FromError replaces the message with the whole wrapped text).
func grpcStatus(err error) (*status.Status, bool) {
	var gs interface{ GRPCStatus() *status.Status }
	if !errors.As(err, &gs) {
		return nil, false
	}
	st := gs.GRPCStatus()
	return st, st != nil
}

// StartupError is what Run returns when the agent has no certificate and
// the CA refused to issue one for a reason retrying cannot fix (Permanent):
// the sidecar exits non-zero with the CA's message instead of retrying
// forever.
type StartupError struct{ Err error }

func (e *StartupError) Error() string {
	if _, ok := grpcStatus(e.Err); ok {
		return "agent: the CA refused the first certificate: " + caMessage(e.Err)
	}
	return "agent: cannot get the first certificate: " + e.Err.Error()
}

func (e *StartupError) Unwrap() error { return e.Err }
