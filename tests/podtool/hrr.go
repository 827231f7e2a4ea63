package podtool

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"
)

// HRRConfig is an HTTP/1.1 keep-alive request/response run: Conns
// connections, each sending GET Path and reading the whole response, back
// to back (or paced, with Rate), for Duration. Every response must have
// status 200.
type HRRConfig struct {
	To       string // IP:PORT
	Path     string
	Duration time.Duration
	Conns    int
	// Rate, when set, paces the requests to this many per second in all
	// (Rate/Conns per connection, evenly spaced; a late request is sent at
	// once and the schedule keeps its pace), so that latency is measured
	// at a given load rather than at saturation.
	Rate float64
}

// HRR runs the HTTP load; its result is rr's.
func HRR(ctx context.Context, cfg HRRConfig) RRResult {
	if err := checkRun(cfg.To, cfg.Duration, cfg.Conns); err != nil {
		return RRResult{Error: err.Error()}
	}
	if cfg.Path == "" {
		cfg.Path = "/"
	}
	return runLoad(ctx, cfg.Duration, cfg.Conns, func(ctx context.Context, observe func(time.Duration)) error {
		return hrrConn(ctx, cfg, observe)
	})
}

// hrrConn runs one keep-alive connection until ctx ends; ending at the
// deadline is not an error.
func hrrConn(ctx context.Context, cfg HRRConfig, observe func(time.Duration)) error {
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", cfg.To)
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
	req := []byte(fmt.Sprintf("GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: nodemesh-podtool\r\n\r\n", cfg.Path, cfg.To))
	br := bufio.NewReaderSize(c, 16<<10)
	var interval time.Duration
	next := time.Now()
	if cfg.Rate > 0 {
		interval = time.Duration(float64(time.Second) * float64(cfg.Conns) / cfg.Rate)
	}
	for ctx.Err() == nil {
		if interval > 0 {
			next = next.Add(interval)
			if wait := time.Until(next); wait > 0 {
				select {
				case <-ctx.Done():
					return nil
				case <-time.After(wait):
				}
			}
		}
		t0 := time.Now()
		if _, err := c.Write(req); err != nil {
			return ignoreDeadline(ctx, err)
		}
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			return ignoreDeadline(ctx, err)
		}
		_, err = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if err != nil {
			return ignoreDeadline(ctx, err)
		}
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("GET %s: status %d", cfg.Path, resp.StatusCode)
		}
		if resp.Close {
			return fmt.Errorf("GET %s: the server closed the connection", cfg.Path)
		}
		observe(time.Since(t0))
	}
	return nil
}
