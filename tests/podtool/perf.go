package podtool

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// Bounds of the load generators.
const (
	MaxConns   = 256
	rrMsgSize  = 64
	maxSamples = 1 << 22 // latency samples kept per run; later ones are counted only
	bulkChunk  = 128 << 10
)

// RRConfig is a TCP request/response run: Conns connections, each sending a
// 64-byte request and waiting for its echo, back to back, for Duration.
type RRConfig struct {
	To       string
	Duration time.Duration
	Conns    int
}

// RRResult is what rr prints as one JSON line.
type RRResult struct {
	OK       bool    `json:"ok"`
	RPS      float64 `json:"rps"`
	P50us    int64   `json:"p50_us"`
	P99us    int64   `json:"p99_us"`
	Requests int64   `json:"requests"`
	Errors   int64   `json:"errors"`
	Error    string  `json:"error,omitempty"`
}

// summarize fills in the result of a request/response run from its
// counts, duration and latency samples (µs).
func (res *RRResult) summarize(requests, errs int64, elapsed time.Duration, samples []int64, firstErr error) {
	res.Requests, res.Errors = requests, errs
	res.RPS = float64(res.Requests) / elapsed.Seconds()
	if len(samples) > 0 {
		slices.Sort(samples)
		res.P50us = samples[len(samples)*50/100]
		res.P99us = samples[min(len(samples)*99/100, len(samples)-1)]
	}
	if firstErr != nil {
		res.Error = firstErr.Error()
	}
	res.OK = res.Requests > 0 && res.Errors == 0
}

func checkRun(to string, d time.Duration, conns int) error {
	var errs []error
	if _, _, err := net.SplitHostPort(to); err != nil {
		errs = append(errs, fmt.Errorf("to %q: want IP:PORT", to))
	}
	if d <= 0 || d > MaxDuration {
		errs = append(errs, fmt.Errorf("duration %s: want (0, %s]", d, MaxDuration))
	}
	if conns < 1 || conns > MaxConns {
		errs = append(errs, fmt.Errorf("conns %d: want 1..%d", conns, MaxConns))
	}
	return errors.Join(errs...)
}

// RR runs the request/response load. It is OK when at least one request
// completed and no connection failed to open.
func RR(ctx context.Context, cfg RRConfig) RRResult {
	var res RRResult
	if err := checkRun(cfg.To, cfg.Duration, cfg.Conns); err != nil {
		res.Error = err.Error()
		return res
	}
	return runLoad(ctx, cfg.Duration, cfg.Conns, func(ctx context.Context, observe func(time.Duration)) error {
		return rrConn(ctx, cfg.To, observe)
	})
}

// runLoad runs conns connections of connFn for d and summarizes them.
func runLoad(ctx context.Context, d time.Duration, conns int, connFn func(context.Context, func(time.Duration)) error) RRResult {
	var res RRResult
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	var (
		mu       sync.Mutex
		samples  []int64
		requests atomic.Int64
		errs     atomic.Int64
		firstErr error
		wg       sync.WaitGroup
	)
	start := time.Now()
	perConn := maxSamples / conns
	for range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var local []int64
			err := connFn(ctx, func(d time.Duration) {
				requests.Add(1)
				if len(local) < perConn {
					local = append(local, d.Microseconds())
				}
			})
			mu.Lock()
			defer mu.Unlock()
			samples = append(samples, local...)
			if err != nil {
				errs.Add(1)
				if firstErr == nil {
					firstErr = err
				}
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	res.summarize(requests.Load(), errs.Load(), elapsed, samples, firstErr)
	return res
}

// rrConn runs one connection until ctx ends; ending at the deadline is not
// an error.
func rrConn(ctx context.Context, to string, observe func(time.Duration)) error {
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", to)
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		c.SetDeadline(dl)
	}
	req := make([]byte, rrMsgSize)
	resp := make([]byte, rrMsgSize)
	for ctx.Err() == nil {
		t0 := time.Now()
		if _, err := c.Write(req); err != nil {
			return ignoreDeadline(ctx, err)
		}
		if _, err := io.ReadFull(c, resp); err != nil {
			return ignoreDeadline(ctx, err)
		}
		observe(time.Since(t0))
	}
	return nil
}

// ignoreDeadline drops the error that ends the run: the connection's
// deadline is the run's end, and it may fire just before ctx reports it.
func ignoreDeadline(ctx context.Context, err error) error {
	if ctx.Err() != nil || errors.Is(err, os.ErrDeadlineExceeded) {
		return nil
	}
	return err
}

// BulkConfig is a one-connection throughput run.
type BulkConfig struct {
	To       string
	Duration time.Duration
}

// BulkResult is what bulk prints as one JSON line: the bytes the server
// counted, over the time until it answered.
type BulkResult struct {
	OK       bool    `json:"ok"`
	BitsPerS float64 `json:"bits_per_s"`
	Bytes    int64   `json:"bytes"`
	Error    string  `json:"error,omitempty"`
}

// Bulk writes for Duration, half-closes and waits (at most 5 s more) for
// the server's byte count.
func Bulk(ctx context.Context, cfg BulkConfig) BulkResult {
	var res BulkResult
	if err := checkRun(cfg.To, cfg.Duration, 1); err != nil {
		res.Error = err.Error()
		return res
	}
	var d net.Dialer
	dctx, cancel := context.WithTimeout(ctx, min(cfg.Duration, 5*time.Second))
	c, err := d.DialContext(dctx, "tcp", cfg.To)
	cancel()
	if err != nil {
		res.Error = err.Error()
		return res
	}
	defer c.Close()
	tc, ok := c.(*net.TCPConn)
	if !ok {
		res.Error = "not a TCP connection"
		return res
	}
	start := time.Now()
	end := start.Add(cfg.Duration)
	tc.SetWriteDeadline(end)
	buf := make([]byte, bulkChunk)
	for time.Now().Before(end) && ctx.Err() == nil {
		if _, err := tc.Write(buf); err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				break
			}
			res.Error = err.Error()
			return res
		}
	}
	if err := tc.CloseWrite(); err != nil {
		res.Error = "half-close: " + err.Error()
		return res
	}
	tc.SetReadDeadline(time.Now().Add(5 * time.Second))
	var b [8]byte
	if _, err := io.ReadFull(tc, b[:]); err != nil {
		res.Error = "read count: " + err.Error()
		return res
	}
	elapsed := time.Since(start)
	res.Bytes = int64(binary.BigEndian.Uint64(b[:]))
	res.BitsPerS = float64(res.Bytes) * 8 / elapsed.Seconds()
	res.OK = res.Bytes > 0
	return res
}
