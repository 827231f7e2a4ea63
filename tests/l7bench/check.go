package l7bench

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"
)

// Request sends one HTTP/1.1 request from namespace ns to addr and returns
// the status and body.
func Request(ns, addr, method, path string) (int, string, error) {
	c, err := DialIn(ns, addr, 2*time.Second)
	if err != nil {
		return 0, "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := fmt.Fprintf(c, "%s %s HTTP/1.1\r\nHost: server.bench\r\nContent-Length: 0\r\nConnection: close\r\n\r\n", method, path); err != nil {
		return 0, "", err
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return 0, "", fmt.Errorf("%s %s via %s: %w", method, path, addr, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

// Verdict is one request of CheckPolicy and the status it must get.
type Verdict struct {
	Method, Path string
	Status       int
}

// PolicyVerdicts are the requests every proxy configuration must answer
// alike: the allowed rule passes to the backend (200), everything else is
// refused by the proxy (403) and never reaches the backend (which would
// answer 404).
var PolicyVerdicts = []Verdict{
	{"GET", "/userdata/42", 200},
	{"GET", "/userdata/42?x=1", 200},
	{"GET", "/userdata/abc", 403},
	{"GET", "/userdata/42abc", 403},
	{"GET", "/other", 403},
	{"POST", "/userdata/42", 403},
}

// CheckPolicy sends PolicyVerdicts from the client namespace to addr.
func (t *Topology) CheckPolicy(addr string) error {
	var errs []error
	for _, v := range PolicyVerdicts {
		code, body, err := Request(t.Client, addr, v.Method, v.Path)
		switch {
		case err != nil:
			errs = append(errs, err)
		case code != v.Status:
			errs = append(errs, fmt.Errorf("%s %s via %s: %d %.80q, want %d", v.Method, v.Path, addr, code, body, v.Status))
		case code == 200 && len(body) != BodySize:
			errs = append(errs, fmt.Errorf("%s %s via %s: %d bytes, want %d", v.Method, v.Path, addr, len(body), BodySize))
		}
	}
	return errors.Join(errs...)
}
