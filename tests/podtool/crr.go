package podtool

import (
	"context"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// CRRConfig is a TCP connect/request/response run: Conns workers, each
// opening a new connection, sending one 64-byte request, waiting for its
// echo and closing, back to back, for Duration. It is the load where the
// cost of deciding on a new connection shows (netperf's TCP_CRR).
type CRRConfig struct {
	To       string
	Duration time.Duration
	Conns    int
	// Timeout bounds one connection's exchange (connect, request, echo);
	// 0 means 1 s.
	Timeout time.Duration
	// Reset closes each connection with a RST (SO_LINGER 0) instead of a
	// FIN, so that no TIME_WAIT socket is left behind on the client.
	Reset bool
}

// CRRResult is what crr prints as one JSON line. RPS counts completed
// connections (one request each) per second; the latencies are of connect,
// request and echo together, the close excluded.
type CRRResult = RRResult

// CRR runs the connect/request/response load. A failed connection is
// counted and the worker goes on with the next one; the run is OK when at
// least one request completed and none failed.
func CRR(ctx context.Context, cfg CRRConfig) CRRResult {
	var res CRRResult
	if err := checkRun(cfg.To, cfg.Duration, cfg.Conns); err != nil {
		res.Error = err.Error()
		return res
	}
	timeout := cfg.Timeout
	if timeout <= 0 {
		timeout = time.Second
	}
	if timeout > MaxTimeout {
		res.Error = "timeout longer than " + MaxTimeout.String()
		return res
	}
	ctx, cancel := context.WithTimeout(ctx, cfg.Duration)
	defer cancel()
	end, _ := ctx.Deadline()
	// running is false once the run is over. A connection's deadline (the
	// run's end) may fire just before ctx reports it: the clock decides.
	running := func() bool { return ctx.Err() == nil && time.Now().Before(end) }
	var (
		mu       sync.Mutex
		samples  []int64
		requests atomic.Int64
		errs     atomic.Int64
		firstErr error
		wg       sync.WaitGroup
	)
	start := time.Now()
	perConn := maxSamples / cfg.Conns
	for range cfg.Conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var local []int64
			var werr error
			for running() {
				t0 := time.Now()
				err := crrOnce(ctx, cfg.To, timeout, cfg.Reset)
				if err != nil {
					if !running() {
						break // the run ended during the exchange
					}
					errs.Add(1)
					if werr == nil {
						werr = err
					}
					continue
				}
				requests.Add(1)
				if len(local) < perConn {
					local = append(local, time.Since(t0).Microseconds())
				}
			}
			mu.Lock()
			defer mu.Unlock()
			samples = append(samples, local...)
			if werr != nil && firstErr == nil {
				firstErr = werr
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	res.summarize(requests.Load(), errs.Load(), elapsed, samples, firstErr)
	return res
}

// crrOnce opens a connection, exchanges one request and closes it. The
// close is not timed: it returns before the peer's FIN arrives.
func crrOnce(ctx context.Context, to string, timeout time.Duration, reset bool) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", to)
	if err != nil {
		return err
	}
	tc := c.(*net.TCPConn)
	defer func() {
		if reset {
			tc.SetLinger(0)
		}
		tc.Close()
	}()
	dl, _ := ctx.Deadline()
	tc.SetDeadline(dl)
	var req, resp [rrMsgSize]byte
	if _, err := tc.Write(req[:]); err != nil {
		return err
	}
	if _, err := io.ReadFull(tc, resp[:]); err != nil {
		return err
	}
	return nil
}
