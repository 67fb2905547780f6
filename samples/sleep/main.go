// Command sleep is the seed's client workload: it does nothing but stay up,
// so that a sidecar runs beside it and people can `exec` curl "from the sleep
// container" (in a network-namespace pod: `ip netns exec <pod> curl ...`).
// It exits cleanly on SIGTERM or Ctrl-C.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	fmt.Fprintln(os.Stderr, "sleep: waiting; run curl beside me")
	<-ctx.Done()
}
