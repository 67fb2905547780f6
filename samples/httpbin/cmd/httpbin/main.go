// Command httpbin serves the sample httpbin app (package
// github.com/meshauth/meshauth/samples/httpbin) on one address.
//
//	httpbin --listen :80
//
// In the mesh it runs behind its sidecar; the Kubernetes manifest
// samples/httpbin/httpbin.yaml runs it as container port 80 behind the
// Service's port 8000, as in the seed.
package main

import (
	"context"
	"flag"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/meshauth/meshauth/samples/httpbin"
)

func main() {
	listen := flag.String("listen", envOr("HTTPBIN_LISTEN", ":80"), "address to serve on (env HTTPBIN_LISTEN)")
	flag.Parse()
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	if err := run(*listen, log); err != nil {
		log.Error("httpbin stopped", "err", err)
		os.Exit(1)
	}
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

func run(listen string, log *slog.Logger) error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return httpbin.Serve(ctx, listen, log)
}
