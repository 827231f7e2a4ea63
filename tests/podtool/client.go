package podtool

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"syscall"
	"time"
)

// Reasons a client call failed.
const (
	ReasonRefused     = "refused"     // RST, or ICMP port unreachable for UDP
	ReasonTimeout     = "timeout"     // no answer in time: dropped somewhere
	ReasonUnreachable = "unreachable" // no route, or ICMP host/net unreachable
	ReasonMismatch    = "mismatch"    // an answer, but not the echo sent
	ReasonUnsupported = "unsupported" // the kernel lacks the protocol (SCTP)
	ReasonError       = "error"       // anything else
)

// Limits on client calls.
const (
	MaxCount    = 10000
	MaxTimeout  = time.Minute
	MaxDuration = 10 * time.Minute
)

// ConnectConfig is one echo exchange: Count round trips of Payload over one
// connection (TCP, SCTP) or Count datagrams (UDP).
type ConnectConfig struct {
	Proto   string        // tcp, udp or sctp
	To      string        // IP:PORT
	Timeout time.Duration // for the whole call
	Count   int
	Payload string
}

// Validate reports every invalid field.
func (c ConnectConfig) Validate() error {
	var errs []error
	switch c.Proto {
	case "tcp", "udp", "sctp":
	default:
		errs = append(errs, fmt.Errorf("proto %q: want tcp, udp or sctp", c.Proto))
	}
	if _, _, err := net.SplitHostPort(c.To); err != nil {
		errs = append(errs, fmt.Errorf("to %q: want IP:PORT", c.To))
	}
	if c.Timeout <= 0 || c.Timeout > MaxTimeout {
		errs = append(errs, fmt.Errorf("timeout %s: want (0, %s]", c.Timeout, MaxTimeout))
	}
	if c.Count < 1 || c.Count > MaxCount {
		errs = append(errs, fmt.Errorf("count %d: want 1..%d", c.Count, MaxCount))
	}
	if c.Payload == "" {
		errs = append(errs, errors.New("payload must not be empty"))
	}
	return errors.Join(errs...)
}

// ConnectResult is what connect prints as one JSON line.
type ConnectResult struct {
	OK     bool   `json:"ok"`
	Proto  string `json:"proto"`
	To     string `json:"to"`
	Rounds int    `json:"rounds"` // round trips that completed
	RTTus  int64  `json:"rtt_us"` // mean round trip
	Reason string `json:"reason,omitempty"`
	Error  string `json:"error,omitempty"`
}

// Connect runs the exchange. It never panics on network errors; they end up
// in the result.
func Connect(ctx context.Context, cfg ConnectConfig) ConnectResult {
	res := ConnectResult{Proto: cfg.Proto, To: cfg.To}
	if err := cfg.Validate(); err != nil {
		res.Reason, res.Error = ReasonError, err.Error()
		return res
	}
	ctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	defer cancel()
	deadline, _ := ctx.Deadline()
	start := time.Now()
	err := func() error {
		var c net.Conn
		var err error
		if cfg.Proto == "sctp" {
			c, err = dialSCTP(ctx, cfg.To)
		} else {
			var d net.Dialer
			c, err = d.DialContext(ctx, cfg.Proto, cfg.To)
		}
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetDeadline(deadline)
		want := []byte(cfg.Payload)
		got := make([]byte, len(want)+1)
		for res.Rounds < cfg.Count {
			if _, err := c.Write(want); err != nil {
				return err
			}
			var n int
			if cfg.Proto == "udp" {
				n, err = c.Read(got)
			} else {
				n, err = io.ReadFull(c, got[:len(want)])
			}
			if err != nil {
				return err
			}
			if !bytes.Equal(got[:n], want) {
				return fmt.Errorf("%w: sent %q, got %q", errMismatch, want, got[:n])
			}
			res.Rounds++
		}
		return nil
	}()
	if res.Rounds > 0 {
		res.RTTus = time.Since(start).Microseconds() / int64(res.Rounds)
	}
	if err != nil {
		res.Reason, res.Error = classify(err), err.Error()
		return res
	}
	res.OK = true
	return res
}

var errMismatch = errors.New("echo mismatch")

// classify maps a network error to a Reason.
func classify(err error) string {
	var ne net.Error
	switch {
	case errors.Is(err, errMismatch):
		return ReasonMismatch
	case errors.Is(err, ErrSCTPUnsupported):
		return ReasonUnsupported
	case errors.Is(err, syscall.ECONNREFUSED), errors.Is(err, syscall.ECONNRESET):
		return ReasonRefused
	case errors.Is(err, syscall.ENETUNREACH), errors.Is(err, syscall.EHOSTUNREACH):
		return ReasonUnreachable
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, os.ErrDeadlineExceeded),
		errors.As(err, &ne) && ne.Timeout():
		return ReasonTimeout
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		// The server closed without answering: a proxy or policy rejected
		// the connection after accepting it.
		return ReasonRefused
	}
	return ReasonError
}

// HTTPConfig is one HTTP/1.1 request.
type HTTPConfig struct {
	URL     string
	Method  string
	Headers []string // "Name: value"
	Body    string
	Timeout time.Duration
}

// HTTPResult is what http prints as one JSON line. OK means a response
// arrived, whatever its status.
type HTTPResult struct {
	OK     bool   `json:"ok"`
	Status int    `json:"status,omitempty"`
	Pod    string `json:"pod,omitempty"`  // X-Pod-Name of the answer
	Bytes  int64  `json:"bytes"`          // body length
	Body   string `json:"body,omitempty"` // first 256 bytes
	Reason string `json:"reason,omitempty"`
	Error  string `json:"error,omitempty"`
}

// HTTP sends the request without keep-alive or proxies from the environment.
func HTTP(ctx context.Context, cfg HTTPConfig) HTTPResult {
	var res HTTPResult
	if cfg.Timeout <= 0 || cfg.Timeout > MaxTimeout {
		res.Reason, res.Error = ReasonError, fmt.Sprintf("timeout %s: want (0, %s]", cfg.Timeout, MaxTimeout)
		return res
	}
	ctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, cfg.Method, cfg.URL, strings.NewReader(cfg.Body))
	if err != nil {
		res.Reason, res.Error = ReasonError, err.Error()
		return res
	}
	for _, h := range cfg.Headers {
		k, v, ok := strings.Cut(h, ":")
		if !ok {
			res.Reason, res.Error = ReasonError, fmt.Sprintf("header %q: want Name: value", h)
			return res
		}
		req.Header.Add(strings.TrimSpace(k), strings.TrimSpace(v))
	}
	tr := &http.Transport{DisableKeepAlives: true, Proxy: nil}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		res.Reason, res.Error = classify(err), err.Error()
		return res
	}
	defer resp.Body.Close()
	var head bytes.Buffer
	n, err := io.Copy(&head, io.LimitReader(resp.Body, 256))
	if err == nil {
		var m int64
		m, err = io.Copy(io.Discard, resp.Body)
		n += m
	}
	res.Status, res.Pod, res.Bytes, res.Body = resp.StatusCode, resp.Header.Get("X-Pod-Name"), n, head.String()
	if err != nil {
		res.Reason, res.Error = classify(err), "read body: "+err.Error()
		return res
	}
	res.OK = true
	return res
}
