//go:build wicketbench

package main

import (
	"net"
	"net/http"
	"net/http/pprof"
	"os"
)

// A build with -tags wicketbench (the bench harness's `-profile`, never a
// release build) serves net/http/pprof on the Unix socket named by
// WICKET_BENCH_PPROF_SOCKET, so the harness can profile the agent process
// under an outside load client. It is a socket of its own, never the guest
// API, and the variable is unset at once so no child inherits it.
func init() {
	path := os.Getenv("WICKET_BENCH_PPROF_SOCKET")
	if path == "" {
		return
	}
	os.Unsetenv("WICKET_BENCH_PPROF_SOCKET")
	os.Remove(path)
	ln, err := net.Listen("unix", path)
	if err != nil {
		return
	}
	os.Chmod(path, 0o600)
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	go http.Serve(ln, mux)
}
