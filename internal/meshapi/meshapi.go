// Package meshapi converts between the control-plane API's typed protobuf
// messages (api/meshauth/v1) and the Go types the rest of meshauth works
// with, in both directions, one file per message family:
//
//   - sidecarapi (its own package, so the sidecar links only it): the
//     Discovery push, policy.Snapshot <-> PolicySnapshot, and the trust
//     bundle;
//   - careport.go: Admin CAStatus and ListIssued, careport <-> protobuf;
//   - state.go: Admin GetState, State (config, registry, sidecars) <->
//     GetStateResponse.
//
// Every conversion from the wire checks what the generated code cannot: an
// enum value this build does not know is refused with an error naming the
// field, never guessed. Empty lists and maps come back nil (protobuf does not
// tell an empty list from an absent one).
package meshapi
