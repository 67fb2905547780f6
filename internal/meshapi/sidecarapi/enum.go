// Package sidecarapi converts the API messages a sidecar reads, the
// Discovery push (policy.Snapshot <-> PolicySnapshot) and the trust bundle,
// and holds the enum and list helpers every conversion uses. It is apart
// from internal/meshapi (the Admin API's state and CA reports) so that the
// sidecar does not link the config kinds, the registry or the policy
// engine (cmd/meshd-sidecar TestSmallSidecar). Same rules: an enum value
// this build does not know is refused with an error naming the field.
package sidecarapi

import (
	"fmt"
	"slices"
	"strings"
)

// Enum maps a Go string enum to a protobuf enum and back. The Go zero value
// "" is the protobuf zero value (UNSPECIFIED); any other value without a
// mapping is an error in either direction.
type Enum[G ~string, P ~int32] struct {
	name     string
	toWire   map[G]P
	fromWire map[P]G
}

func NewEnum[G ~string, P ~int32](name string, pairs map[G]P) Enum[G, P] {
	e := Enum[G, P]{name: name, toWire: map[G]P{"": 0}, fromWire: map[P]G{0: ""}}
	for g, p := range pairs {
		e.toWire[g], e.fromWire[p] = p, g
	}
	return e
}

func (e Enum[G, P]) Wire(g G, path string) (P, error) {
	p, ok := e.toWire[g]
	if !ok {
		return 0, fmt.Errorf("%s: %s %q has no protobuf value", path, e.name, string(g))
	}
	return p, nil
}

func (e Enum[G, P]) FromProto(p P, path string) (G, error) {
	g, ok := e.fromWire[p]
	if !ok {
		return "", fmt.Errorf("%s: unknown %s %d (a newer control plane? this build knows %s)", path, e.name, int32(p), e.known())
	}
	return g, nil
}

func (e Enum[G, P]) known() string {
	var names []string
	for g := range e.toWire {
		if g != "" {
			names = append(names, string(g))
		}
	}
	slices.Sort(names)
	return strings.Join(names, ", ")
}

// NilIfEmpty returns nil for an empty slice, so that a round trip through
// protobuf (which has no empty-versus-absent) gives the same Go value.
func NilIfEmpty[T any](s []T) []T {
	if len(s) == 0 {
		return nil
	}
	return s
}

// MapOrNil copies a map, nil when empty.
func MapOrNil[K comparable, V any](m map[K]V) map[K]V {
	if len(m) == 0 {
		return nil
	}
	out := make(map[K]V, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}
