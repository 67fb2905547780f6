package identity_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/meshauth/meshauth/internal/identity"
)

func TestNew(t *testing.T) {
	tests := []struct {
		name        string
		td, ns, sa  string
		want        string
		wantErrPart string
	}{
		{name: "default trust domain", ns: "default", sa: "sleep", want: "spiffe://cluster.local/ns/default/sa/sleep"},
		{name: "explicit trust domain", td: "example.org", ns: "foo", sa: "httpbin", want: "spiffe://example.org/ns/foo/sa/httpbin"},
		{name: "service account with dots", ns: "a", sa: "x.y-z", want: "spiffe://cluster.local/ns/a/sa/x.y-z"},
		{name: "uppercase namespace", ns: "Default", sa: "s", wantErrPart: "namespace"},
		{name: "namespace with dot", ns: "a.b", sa: "s", wantErrPart: "namespace"},
		{name: "empty namespace", ns: "", sa: "s", wantErrPart: "namespace"},
		{name: "namespace too long", ns: strings.Repeat("a", 64), sa: "s", wantErrPart: "namespace"},
		{name: "namespace leading dash", ns: "-a", sa: "s", wantErrPart: "namespace"},
		{name: "empty service account", ns: "a", sa: "", wantErrPart: "service account"},
		{name: "service account with slash", ns: "a", sa: "b/c", wantErrPart: "service account"},
		{name: "service account too long", ns: "a", sa: strings.Repeat("s", 254), wantErrPart: "service account"},
		{name: "bad trust domain", td: "Bad_TD!", ns: "a", sa: "b", wantErrPart: "trust domain"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id, err := identity.New(tt.td, tt.ns, tt.sa)
			if tt.wantErrPart != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErrPart) {
					t.Fatalf("New(%q,%q,%q) error = %v, want one mentioning %q", tt.td, tt.ns, tt.sa, err, tt.wantErrPart)
				}
				return
			}
			if err != nil {
				t.Fatalf("New: %v", err)
			}
			if id.String() != tt.want {
				t.Errorf("String() = %q, want %q", id.String(), tt.want)
			}
			if id.SPIFFE().String() != tt.want {
				t.Errorf("SPIFFE() = %q, want %q", id.SPIFFE(), tt.want)
			}
		})
	}
}

func TestParse(t *testing.T) {
	tests := []struct {
		in      string
		want    identity.ID
		wantErr error // nil means any error is fine when wantOK is false
		wantOK  bool
	}{
		{in: "spiffe://cluster.local/ns/default/sa/sleep", wantOK: true, want: identity.ID{TrustDomain: "cluster.local", Namespace: "default", ServiceAccount: "sleep"}},
		{in: "spiffe://example.org/ns/foo/sa/bar.baz", wantOK: true, want: identity.ID{TrustDomain: "example.org", Namespace: "foo", ServiceAccount: "bar.baz"}},
		{in: "spiffe://cluster.local/ns/default", wantErr: identity.ErrNotWorkloadID},
		{in: "spiffe://cluster.local/ns/default/sa/sleep/extra", wantErr: identity.ErrNotWorkloadID},
		{in: "spiffe://cluster.local/sa/x/ns/y", wantErr: identity.ErrNotWorkloadID},
		{in: "spiffe://cluster.local", wantErr: identity.ErrNotWorkloadID},
		{in: "https://cluster.local/ns/a/sa/b"},
		{in: "spiffe://cluster.local/ns/a/sa/b?x=1"},
		{in: "spiffe://cluster.local/ns/a/sa/b#frag"},
		{in: "spiffe://CLUSTER.local/ns/a/sa/b"},
		{in: "spiffe://user@cluster.local/ns/a/sa/b"},
		{in: "spiffe://cluster.local:8443/ns/a/sa/b"},
		{in: "spiffe://cluster.local//ns/a/sa/b"},
		{in: "spiffe://cluster.local/ns/a/sa/b/"},
		{in: "spiffe://cluster.local/ns/A/sa/b"},
		{in: "spiffe:///ns/a/sa/b"},
		{in: ""},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			id, err := identity.Parse(tt.in)
			if !tt.wantOK {
				if err == nil {
					t.Fatalf("Parse(%q) = %v, want error", tt.in, id)
				}
				if tt.wantErr != nil && !errors.Is(err, tt.wantErr) {
					t.Fatalf("Parse(%q) error = %v, want %v", tt.in, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("Parse(%q): %v", tt.in, err)
			}
			if id != tt.want {
				t.Fatalf("Parse(%q) = %+v, want %+v", tt.in, id, tt.want)
			}
		})
	}
}

func TestPrincipalRoundTrip(t *testing.T) {
	id := identity.MustParse("spiffe://cluster.local/ns/foo/sa/bar")
	if got := id.Principal(); got != "cluster.local/ns/foo/sa/bar" {
		t.Fatalf("Principal() = %q", got)
	}
	back, err := identity.ParsePrincipal(id.Principal())
	if err != nil || back != id {
		t.Fatalf("ParsePrincipal(%q) = %v, %v; want %v", id.Principal(), back, err, id)
	}
	if !(identity.ID{}).IsZero() || id.IsZero() {
		t.Fatal("IsZero wrong")
	}
}

func TestMustParsePanics(t *testing.T) {
	defer func() {
		if recover() == nil {
			t.Fatal("MustParse of an invalid ID did not panic")
		}
	}()
	identity.MustParse("spiffe://cluster.local/nope")
}

// FuzzParse checks that Parse never panics and that everything it accepts is
// canonical: printing and reparsing gives the same ID and the same string,
// and the pieces are valid on their own.
func FuzzParse(f *testing.F) {
	for _, s := range []string{
		"spiffe://cluster.local/ns/default/sa/sleep",
		"spiffe://example.org/ns/a/sa/b.c",
		"spiffe://cluster.local/ns/default",
		"spiffe://td/ns//sa/x",
		"spiffe://td/ns/a/sa/b/../c",
		"spiffe://td/ns/%41/sa/b",
		"https://td/ns/a/sa/b",
		"",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		id, err := identity.Parse(s)
		if err != nil {
			if !id.IsZero() {
				t.Fatalf("Parse(%q) returned %v with error %v", s, id, err)
			}
			return
		}
		if id.String() != s {
			t.Fatalf("Parse(%q) accepted a non-canonical form; String() = %q", s, id.String())
		}
		again, err := identity.Parse(id.String())
		if err != nil || again != id {
			t.Fatalf("reparse of %q = %v, %v", id.String(), again, err)
		}
		if _, err := identity.New(id.TrustDomain, id.Namespace, id.ServiceAccount); err != nil {
			t.Fatalf("Parse(%q) gave parts New refuses: %v", s, err)
		}
		if strings.Contains(id.Namespace, "/") || strings.Contains(id.ServiceAccount, "/") {
			t.Fatalf("Parse(%q) let a slash into a name: %+v", s, id)
		}
	})
}
