package main

import (
	"io"
	"net"
	"net/http"
	"os"
	"strings"
)

// referenceBody is a fixed ~300-byte JSON body, the size of a metadata reply.
var referenceBody = []byte(`{"machine_id":"0123456789abcdef","machine_name":"dev-machine","app":"dev-app","org":"dev","region":"local","image":"registry.example/app:1","image_digest":"sha256:` + strings.Repeat("ab", 32) + `","private_ip":"fdaa::2","tags":{"env":"dev"}}` + "\n")

// referenceJWT is as long as an RS256 token the agent serves (~830 bytes).
var referenceJWT = []byte(strings.Repeat("x", 830))

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
		if r.Method == http.MethodPost {
			// The shape of a token request: read the small JSON body,
			// answer a JWT-sized body. Separates what the request's
			// shape costs from what the agent's handler costs.
			io.Copy(io.Discard, r.Body)
			w.Header().Set("Content-Type", "application/jwt")
			w.Write(referenceJWT)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.Write(referenceBody)
	}))
}
