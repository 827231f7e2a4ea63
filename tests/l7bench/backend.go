package l7bench

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
)

// BodySize is the size of the backend's answer to GET /userdata/N.
const BodySize = 1024

// backend is the server namespace's HTTP/1.1 server: 200 with BodySize
// bytes for paths under /userdata/, 404 for anything else, so a request a
// proxy should have denied shows as a 404 rather than a 200. It is
// deliberately small (one read buffer and one prebuilt response per
// request, no routing, no allocations per request) so that the machine's
// cores go to the proxies under test rather than to the server; it speaks
// keep-alive HTTP/1.1 as wrk, HAProxy and nodemesh-proxy do, and honours
// Content-Length and Connection: close.
type backend struct {
	lns []net.Listener
	wg  sync.WaitGroup // connections
}

var (
	respOK       = []byte("HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: " + strconv.Itoa(BodySize) + "\r\n\r\n" + strings.Repeat("x", BodySize))
	respNotFound = []byte("HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\nContent-Length: 10\r\n\r\nnot found\n")
	respBad      = []byte("HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
)

// ServeBackend listens on addrs ("host:port") and serves until ctx ends.
func ServeBackend(ctx context.Context, addrs ...string) error {
	b := &backend{}
	for _, a := range addrs {
		ln, err := net.Listen("tcp", a)
		if err != nil {
			b.close()
			return fmt.Errorf("backend: %w", err)
		}
		b.lns = append(b.lns, ln)
	}
	errc := make(chan error, len(b.lns))
	for _, ln := range b.lns {
		go func() { errc <- b.accept(ln) }()
	}
	var err error
	select {
	case <-ctx.Done():
	case err = <-errc:
	}
	b.close()
	b.wg.Wait()
	return err
}

func (b *backend) close() {
	for _, ln := range b.lns {
		ln.Close()
	}
}

func (b *backend) accept(ln net.Listener) error {
	for {
		c, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			return err
		}
		b.wg.Add(1)
		go func() {
			defer b.wg.Done()
			defer c.Close()
			_ = serveConn(c)
		}()
	}
}

// serveConn answers the requests of one connection in order.
func serveConn(c net.Conn) error {
	br := bufio.NewReaderSize(c, 8192)
	for {
		path, bodyLen, closeAfter, err := readRequest(br)
		if err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			_, _ = c.Write(respBad)
			return err
		}
		if bodyLen > 0 {
			if _, err := br.Discard(bodyLen); err != nil {
				return err
			}
		}
		resp := respNotFound
		if strings.HasPrefix(path, "/userdata/") {
			resp = respOK
		}
		if _, err := c.Write(resp); err != nil {
			return err
		}
		if closeAfter {
			return nil
		}
	}
}

// readRequest reads a request line and headers; it returns the path, the
// Content-Length and whether the client asked to close. Chunked request
// bodies are refused: nothing in the benchmark sends them.
func readRequest(br *bufio.Reader) (path string, bodyLen int, closeAfter bool, err error) {
	line, err := br.ReadSlice('\n')
	if err != nil {
		if len(line) == 0 && errors.Is(err, io.EOF) {
			return "", 0, false, io.EOF
		}
		return "", 0, false, fmt.Errorf("request line: %w", err)
	}
	f := bytes.Fields(line)
	if len(f) != 3 || !bytes.HasPrefix(f[2], []byte("HTTP/1.")) {
		return "", 0, false, fmt.Errorf("bad request line %q", line)
	}
	path = string(f[1])
	closeAfter = bytes.Equal(f[2], []byte("HTTP/1.0"))
	for {
		h, err := br.ReadSlice('\n')
		if err != nil {
			return "", 0, false, fmt.Errorf("headers: %w", err)
		}
		h = bytes.TrimRight(h, "\r\n")
		if len(h) == 0 {
			return path, bodyLen, closeAfter, nil
		}
		name, value, ok := bytes.Cut(h, []byte(":"))
		if !ok {
			return "", 0, false, fmt.Errorf("bad header %q", h)
		}
		value = bytes.TrimSpace(value)
		switch {
		case bytes.EqualFold(name, []byte("Content-Length")):
			n, err := strconv.Atoi(string(value))
			if err != nil || n < 0 {
				return "", 0, false, fmt.Errorf("bad Content-Length %q", value)
			}
			bodyLen = n
		case bytes.EqualFold(name, []byte("Transfer-Encoding")):
			return "", 0, false, errors.New("chunked request bodies are not supported")
		case bytes.EqualFold(name, []byte("Connection")):
			closeAfter = bytes.EqualFold(value, []byte("close"))
		}
	}
}
