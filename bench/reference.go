package main

import (
	"bufio"
	"bytes"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
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

// serveRawReference is the floor under net/http: a loop that reads a
// request's head (and a POST's Content-Length body) and writes a fixed
// reply, the reference's bodies with the reply's headers prebuilt. It
// parses nothing else and checks nothing: no HTTP server can do less per
// request, so the agent's ratio against it says how far it is from the
// socket's own cost, not from net/http's.
func serveRawReference(socket string) error {
	os.Remove(socket)
	ln, err := net.Listen("unix", socket)
	if err != nil {
		return err
	}
	getReply := rawReply("application/json", referenceBody)
	postReply := rawReply("application/jwt", referenceJWT)
	for {
		c, err := ln.Accept()
		if err != nil {
			return err
		}
		go func() {
			defer c.Close()
			br := bufio.NewReaderSize(c, 4096)
			for {
				post, length, err := readRawHead(br)
				if err != nil {
					return
				}
				if _, err := br.Discard(length); err != nil {
					return
				}
				reply := getReply
				if post {
					reply = postReply
				}
				if _, err := c.Write(reply); err != nil {
					return
				}
			}
		}()
	}
}

func rawReply(contentType string, body []byte) []byte {
	return []byte("HTTP/1.1 200 OK\r\nContent-Type: " + contentType + "\r\nContent-Length: " + strconv.Itoa(len(body)) + "\r\n\r\n" + string(body))
}

// readRawHead reads one request head: whether it is a POST, and its
// Content-Length.
func readRawHead(br *bufio.Reader) (post bool, length int, err error) {
	for first := true; ; first = false {
		line, err := br.ReadSlice('\n')
		if err != nil {
			return false, 0, err
		}
		if first {
			post = bytes.HasPrefix(line, []byte("POST "))
			continue
		}
		if len(line) <= 2 {
			return post, length, nil
		}
		if v, ok := bytes.CutPrefix(bytes.ToLower(line), []byte("content-length:")); ok {
			length, _ = strconv.Atoi(string(bytes.TrimSpace(v)))
		}
	}
}
