package main

import (
	"net"
	"net/http"
	"os"
	"strings"
)

// referenceBody is a fixed ~300-byte JSON body, the size of a metadata reply.
var referenceBody = []byte(`{"machine_id":"0123456789abcdef","machine_name":"dev-machine","app":"dev-app","org":"dev","region":"local","image":"registry.example/app:1","image_digest":"sha256:` + strings.Repeat("ab", 32) + `","private_ip":"fdaa::2","tags":{"env":"dev"}}` + "\n")

// serveReference is the physical limit: a bare net/http server on a Unix
// socket answering a fixed body. It runs in its own process, as the agent
// does, so both are measured under the same conditions.
func serveReference(socket string) error {
	os.Remove(socket)
	ln, err := net.Listen("unix", socket)
	if err != nil {
		return err
	}
	return http.Serve(ln, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Write(referenceBody)
	}))
}
