package agent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// TestPermanent: what the agent gives up on (at start-up) or retries only
// slowly, by gRPC code, through the wrapping the agent adds.
func TestPermanent(t *testing.T) {
	wrap := func(c codes.Code) error {
		return fmt.Errorf("agent: CreateCertificate: %w", status.Error(c, "msg"))
	}
	for _, c := range []codes.Code{codes.InvalidArgument, codes.Unauthenticated, codes.PermissionDenied,
		codes.FailedPrecondition, codes.Unimplemented, codes.NotFound, codes.OutOfRange, codes.AlreadyExists} {
		if !Permanent(wrap(c)) {
			t.Errorf("%s: want permanent", c)
		}
	}
	for _, c := range []codes.Code{codes.Unavailable, codes.DeadlineExceeded, codes.ResourceExhausted,
		codes.Aborted, codes.Internal, codes.Unknown, codes.Canceled, codes.DataLoss} {
		if Permanent(wrap(c)) {
			t.Errorf("%s: want transient", c)
		}
	}
	for _, err := range []error{
		errors.New("agent: connect to CA: dial tcp 127.0.0.1:1: connection refused"),
		fmt.Errorf("agent: %w", context.DeadlineExceeded),
		fmt.Errorf("%w: new certificate", ErrRefused),
		nil,
	} {
		if Permanent(err) {
			t.Errorf("%v: want transient", err)
		}
	}
	if !Permanent(fmt.Errorf("agent: connect to CA: %w", ErrNoToken)) {
		t.Error("no token: want permanent")
	}
	// The CA's own message, not gRPC's wrapping, is what the operator reads.
	err := fmt.Errorf("agent: CreateCertificate: %w", status.Error(codes.InvalidArgument, "requested TTL 2400h0m0s is over the maximum 2160h0m0s"))
	if got, want := caMessage(err), "InvalidArgument: requested TTL 2400h0m0s is over the maximum 2160h0m0s"; got != want {
		t.Errorf("caMessage = %q, want %q", got, want)
	}
}

// TestTokenSourceRereadsFile: the token file is read on every use and a
// change is noticed by Check (the sidecar's poll and SIGHUP); an empty or
// missing file is ErrNoToken.
func TestTokenSourceRereadsFile(t *testing.T) {
	f := filepath.Join(t.TempDir(), "join.token")
	if err := os.WriteFile(f, []byte("mjt_one\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	ts, err := NewTokenSource("ignored", f)
	if err != nil {
		t.Fatal(err)
	}
	if tok, err := ts.Token(); err != nil || tok != "mjt_one" {
		t.Fatalf("Token = %q, %v", tok, err)
	}
	if ts.Check() {
		t.Fatal("Check reports a change of an unchanged file")
	}
	ch := ts.Changed()
	if err := os.WriteFile(f, []byte("mjt_two"), 0o600); err != nil {
		t.Fatal(err)
	}
	if !ts.Check() {
		t.Fatal("Check missed the new token")
	}
	select {
	case <-ch:
	default:
		t.Fatal("Changed not closed on a new token")
	}
	if tok, _ := ts.Token(); tok != "mjt_two" {
		t.Fatalf("Token = %q after the change", tok)
	}
	os.WriteFile(f, nil, 0o600)
	if _, err := ts.Token(); !errors.Is(err, ErrNoToken) {
		t.Fatalf("empty file: %v, want ErrNoToken", err)
	}
	os.Remove(f)
	if _, err := ts.Token(); !errors.Is(err, ErrNoToken) {
		t.Fatalf("missing file: %v, want ErrNoToken", err)
	}
	if _, err := NewTokenSource("", f); err == nil {
		t.Fatal("NewTokenSource accepted a missing token file")
	}
	if st, _ := NewTokenSource(" mjt_fixed ", ""); st.Check() {
		t.Fatal("a fixed token changed")
	}
}
