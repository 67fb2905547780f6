package main

import (
	"context"
	"os"
	"runtime/debug"
	"runtime/metrics"
	"time"
)

// gcHeadroom is how much garbage `meshd control` lets pile up before the GC
// runs, when its live heap is small.
//
// Why: the CA's live heap is a few MiB (roots, bundle, caches), while every
// issuance allocates ~25 KiB of short-lived garbage (x509, ASN.1, gRPC). With
// Go's default GOGC=100 the heap goal is about 2x live, i.e. a GC cycle
// every ~100-200 issuances; each cycle also shrinks the handler goroutines'
// stacks, which then regrow. Profiles of `meshd control` under issuance
// load: at GOGC=100 about 72% of its CPU is the signing work itself, at
// GOGC=800 about 75% (BENCHMARKS.md, "CA issuance").
const gcHeadroom = 64 << 20

// maxGCPercent caps the tuned GOGC: 8x live is ~45 MiB of heap at the
// CA's usual ~5 MiB live.
const maxGCPercent = 800

// tuneGC raises GOGC for a small live heap: the garbage allowed between
// cycles is min(8 x live, max(live, 64 MiB)), i.e. GOGC between 800 and Go's
// default 100. Once the live heap reaches 64 MiB (a large config plane),
// this is plain GOGC=100. It does nothing when the operator set GOGC or
// GOMEMLIMIT: their setting wins. It re-reads the live heap every few
// seconds until ctx ends.
func tuneGC(ctx context.Context) {
	if os.Getenv("GOGC") != "" || os.Getenv("GOMEMLIMIT") != "" {
		return
	}
	sample := []metrics.Sample{{Name: "/gc/heap/live:bytes"}}
	last := -1
	set := func() {
		metrics.Read(sample)
		pct := gcPercentFor(sample[0].Value.Uint64())
		if pct != last {
			debug.SetGCPercent(pct)
			last = pct
		}
	}
	set()
	go func() {
		t := time.NewTicker(5 * time.Second)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				set()
			}
		}
	}()
}

// gcPercentFor returns the GOGC for a live heap of live bytes, rounded
// down to a multiple of 50 so small changes of the live heap do not
// re-tune the GC every time.
func gcPercentFor(live uint64) int {
	if live == 0 {
		return maxGCPercent // before the first cycle: nothing is known yet
	}
	pct := int(min(uint64(gcHeadroom)*100/live, maxGCPercent))
	pct -= pct % 50
	return max(pct, 100)
}
