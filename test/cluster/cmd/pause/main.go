// Command pause is the test cluster's pod sandbox image (containerd's
// sandbox_image): it holds the pod's namespaces and waits for SIGTERM or
// SIGINT. A static Go binary, so the image needs no distribution.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, syscall.SIGTERM, syscall.SIGINT)
	<-ch
}
