package main

import "testing"

// FuzzParseValidity: whatever openssl prints, the demo's reading of its
// validity lines never panics, and success means both dates were found.
func FuzzParseValidity(f *testing.F) {
	f.Add("            Not Before: Nov 23 11:00:00 2026 GMT\n            Not After : Nov 24 11:00:00 2026 GMT\n")
	f.Add("Not After : bogus")
	f.Add("")
	f.Fuzz(func(t *testing.T, out string) {
		nb, na, err := parseValidity(out)
		if err == nil && (nb.IsZero() || na.IsZero()) {
			t.Fatalf("no error but a zero date: %v %v", nb, na)
		}
	})
}
