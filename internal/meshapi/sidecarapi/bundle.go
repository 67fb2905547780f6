package sidecarapi

import (
	"strings"

	pb "github.com/meshauth/meshauth/api/meshauth/v1"
	"github.com/meshauth/meshauth/internal/identity"
)

// BundleFromProto converts a TrustBundle (GetTrustBundle,
// WatchTrustBundle) to the bundle peers are verified against. The other
// direction is the CA server's (internal/control), which owns the CA's
// bundle type.
func BundleFromProto(b *pb.TrustBundle) (*identity.Bundle, error) {
	return identity.NewBundle(b.GetTrustDomain(), b.GetVersion(), b.GetRoots(), RevokedFromProto(b.GetRevocations()))
}

// RevokedFromProto returns revocations as identity.Bundle keeps them:
// serial (lowercase hex, as certificates' serials are compared) -> SPIFFE
// ID.
func RevokedFromProto(revs []*pb.Revocation) map[string]string {
	out := make(map[string]string, len(revs))
	for _, r := range revs {
		out[strings.ToLower(r.GetSerial())] = r.GetSpiffeId()
	}
	return out
}
