package h1

import (
	"bufio"
	"slices"
	"strings"
	"testing"
)

func TestValues(t *testing.T) {
	var h Head
	raw := "GET / HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer a\r\nX-Token: 1\r\nauthorization: Bearer b\r\n\r\n"
	if err := h.Read(bufio.NewReader(strings.NewReader(raw)), true); err != nil {
		t.Fatal(err)
	}
	if got := h.Values("Authorization"); !slices.Equal(got, []string{"Bearer a", "Bearer b"}) {
		t.Errorf("Values(Authorization) = %q", got)
	}
	if got := h.Values("x-token"); !slices.Equal(got, []string{"1"}) {
		t.Errorf("Values(x-token) = %q", got)
	}
	if got := h.Values("X-Absent"); got != nil {
		t.Errorf("Values(X-Absent) = %q", got)
	}
}
