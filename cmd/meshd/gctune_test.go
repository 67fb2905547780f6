package main

import "testing"

func TestGCPercentFor(t *testing.T) {
	for _, c := range []struct {
		live uint64
		want int
	}{
		{0, 800},
		{1 << 20, 800},  // 64 MiB of headroom would be 6400%: capped
		{8 << 20, 800},  // exactly 8x
		{10 << 20, 600}, // 640% rounded down
		{32 << 20, 200}, // 64 MiB is 2x live
		{64 << 20, 100}, // Go's default from here on
		{1 << 30, 100},  // never below the default
		{100 << 20, 100},
	} {
		if got := gcPercentFor(c.live); got != c.want {
			t.Errorf("gcPercentFor(%d MiB) = %d, want %d", c.live>>20, got, c.want)
		}
	}
}
