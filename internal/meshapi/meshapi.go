// Package meshapi converts between the control-plane API's typed protobuf
// messages (api/meshauth/v1) and the Go types the rest of meshauth works
// with, in both directions, one file per message family:
//
//   - snapshot.go: the Discovery push, policy.Snapshot <-> PolicySnapshot;
//   - careport.go: Admin CAStatus and ListIssued, careport <-> protobuf;
//   - state.go: Admin GetState, State (config, registry, sidecars) <->
//     GetStateResponse.
//
// Every conversion from the wire checks what the generated code cannot: an
// enum value this build does not know is refused with an error naming the
// field, never guessed. Empty lists and maps come back nil (protobuf does not
// tell an empty list from an absent one).
package meshapi

import (
	"fmt"
	"slices"
	"strings"
)

// enum maps a Go string enum to a protobuf enum and back. The Go zero value
// "" is the protobuf zero value (UNSPECIFIED); any other value without a
// mapping is an error in either direction.
type enum[G ~string, P ~int32] struct {
	name     string
	toWire   map[G]P
	fromWire map[P]G
}

func newEnum[G ~string, P ~int32](name string, pairs map[G]P) enum[G, P] {
	e := enum[G, P]{name: name, toWire: map[G]P{"": 0}, fromWire: map[P]G{0: ""}}
	for g, p := range pairs {
		e.toWire[g], e.fromWire[p] = p, g
	}
	return e
}

func (e enum[G, P]) wire(g G, path string) (P, error) {
	p, ok := e.toWire[g]
	if !ok {
		return 0, fmt.Errorf("%s: %s %q has no protobuf value", path, e.name, string(g))
	}
	return p, nil
}

func (e enum[G, P]) fromProto(p P, path string) (G, error) {
	g, ok := e.fromWire[p]
	if !ok {
		return "", fmt.Errorf("%s: unknown %s %d (a newer control plane? this build knows %s)", path, e.name, int32(p), e.known())
	}
	return g, nil
}

func (e enum[G, P]) known() string {
	var names []string
	for g := range e.toWire {
		if g != "" {
			names = append(names, string(g))
		}
	}
	slices.Sort(names)
	return strings.Join(names, ", ")
}

// nilIfEmpty returns nil for an empty slice, so that a round trip through
// protobuf (which has no empty-versus-absent) gives the same Go value.
func nilIfEmpty[T any](s []T) []T {
	if len(s) == 0 {
		return nil
	}
	return s
}

// mapOrNil copies a map, nil when empty.
func mapOrNil[K comparable, V any](m map[K]V) map[K]V {
	if len(m) == 0 {
		return nil
	}
	out := make(map[K]V, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}
