package main

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"time"
)

// childEnv, when set in the environment, turns the bench binary (or the test
// binary) into one of its helper processes instead of the harness. Running
// the backend as its own process keeps its CPU apart from the harness's.
const childEnv = "MESHAUTH_BENCH_CHILD"

// bodySize is the backend's response body: 1 KiB, as in the issue.
const bodySize = 1024

// runChild runs the helper named by childEnv and reports whether it did.
func runChild() bool {
	switch os.Getenv(childEnv) {
	case "":
		return false
	case "grpc-backend":
		if err := serveGRPCBackend(os.Getenv("MESHAUTH_BENCH_LISTEN")); err != nil {
			fmt.Fprintln(os.Stderr, "grpc-backend:", err)
			os.Exit(1)
		}
		os.Exit(0)
	case "backend":
		if err := serveBackend(os.Getenv("MESHAUTH_BENCH_LISTEN")); err != nil {
			fmt.Fprintln(os.Stderr, "backend:", err)
			os.Exit(1)
		}
		os.Exit(0)
	default:
		fmt.Fprintln(os.Stderr, "unknown child", os.Getenv(childEnv))
		os.Exit(2)
	}
	return true
}

// serveBackend is the application behind every variant: GET answers 1 KiB,
// POST /upload reads and discards the body and answers the byte count.
func serveBackend(addr string) error {
	body := bytes.Repeat([]byte("x"), bodySize)
	mux := http.NewServeMux()
	mux.HandleFunc("/upload", func(w http.ResponseWriter, r *http.Request) {
		n, err := io.Copy(io.Discard, r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		io.WriteString(w, strconv.FormatInt(n, 10))
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Content-Type", "text/plain")
		h.Set("Content-Length", strconv.Itoa(bodySize))
		w.Write(body)
	})
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 2 * time.Minute}
	return srv.Serve(l)
}
