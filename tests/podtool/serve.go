package podtool

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Limits that keep a server bounded even when a test forgets it.
const (
	// DefaultMaxLifetime is how long Serve runs when ServeConfig.MaxLifetime
	// is zero.
	DefaultMaxLifetime = 10 * time.Minute
	// MaxBodyBytes caps /bytes/N.
	MaxBodyBytes = 16 << 20
	// connIdle closes a stream connection that has been silent this long.
	connIdle = time.Minute
)

// ServeConfig lists the ports to serve on each protocol; every listener binds
// the wildcard address.
type ServeConfig struct {
	TCP  []int // echo
	UDP  []int // echo, one datagram back per datagram
	HTTP []int // HTTP/1.1, see HTTPHandler
	SCTP []int // echo; skipped with a message when the kernel lacks SCTP
	RR   []int // request/response: echo (used by RR)
	Bulk []int // sink: counts bytes until EOF, answers the count (used by Bulk)
	// PodName names the pod in HTTP answers (env POD_NAME in the binary).
	PodName string
	// MaxLifetime stops the server by itself; 0 means DefaultMaxLifetime.
	MaxLifetime time.Duration
}

// Validate reports every invalid port.
func (c ServeConfig) Validate() error {
	var errs []error
	n := 0
	for _, l := range []struct {
		name  string
		ports []int
	}{{"tcp", c.TCP}, {"udp", c.UDP}, {"http", c.HTTP}, {"sctp", c.SCTP}, {"rr", c.RR}, {"bulk", c.Bulk}} {
		for _, p := range l.ports {
			n++
			if p < 1 || p > 65535 {
				errs = append(errs, fmt.Errorf("%s: port %d out of range 1-65535", l.name, p))
			}
		}
	}
	if n == 0 {
		errs = append(errs, errors.New("no port to serve: give at least one of --tcp, --udp, --http, --sctp, --rr, --bulk"))
	}
	if c.MaxLifetime < 0 {
		errs = append(errs, errors.New("max lifetime must not be negative"))
	}
	return errors.Join(errs...)
}

// Serve listens on every configured port, calls ready once all listen, and
// serves until ctx ends or MaxLifetime passes. Problems that do not stop the
// server (a missing SCTP, a failed connection) go to logw.
func Serve(ctx context.Context, cfg ServeConfig, ready func(), logw io.Writer) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	life := cfg.MaxLifetime
	if life == 0 {
		life = DefaultMaxLifetime
	}
	ctx, cancel := context.WithTimeout(ctx, life)
	defer cancel()

	var closers []io.Closer
	var wg sync.WaitGroup
	defer func() {
		for _, c := range closers {
			c.Close()
		}
		wg.Wait()
	}()
	var lmu sync.Mutex
	logf := func(format string, args ...any) {
		lmu.Lock()
		defer lmu.Unlock()
		fmt.Fprintf(logw, format+"\n", args...)
	}
	serveStream := func(l net.Listener, handle func(net.Conn)) {
		closers = append(closers, l)
		wg.Add(1)
		go func() {
			defer wg.Done()
			acceptLoop(ctx, l, handle, &wg)
		}()
	}
	for _, p := range cfg.TCP {
		l, err := net.Listen("tcp", ":"+strconv.Itoa(p))
		if err != nil {
			return fmt.Errorf("listen tcp %d: %w", p, err)
		}
		serveStream(l, echo)
	}
	for _, p := range cfg.RR {
		l, err := net.Listen("tcp", ":"+strconv.Itoa(p))
		if err != nil {
			return fmt.Errorf("listen rr %d: %w", p, err)
		}
		serveStream(l, echo)
	}
	for _, p := range cfg.Bulk {
		l, err := net.Listen("tcp", ":"+strconv.Itoa(p))
		if err != nil {
			return fmt.Errorf("listen bulk %d: %w", p, err)
		}
		serveStream(l, sink)
	}
	for _, p := range cfg.SCTP {
		l, err := listenSCTP(p)
		if errors.Is(err, ErrSCTPUnsupported) {
			logf("sctp: port %d skipped: %v", p, err)
			continue
		}
		if err != nil {
			return fmt.Errorf("listen sctp %d: %w", p, err)
		}
		serveStream(l, echo)
	}
	for _, p := range cfg.UDP {
		pc, err := net.ListenPacket("udp", ":"+strconv.Itoa(p))
		if err != nil {
			return fmt.Errorf("listen udp %d: %w", p, err)
		}
		closers = append(closers, pc)
		wg.Add(1)
		go func() {
			defer wg.Done()
			udpEcho(pc)
		}()
	}
	h := HTTPHandler(cfg.PodName)
	for _, p := range cfg.HTTP {
		l, err := net.Listen("tcp", ":"+strconv.Itoa(p))
		if err != nil {
			return fmt.Errorf("listen http %d: %w", p, err)
		}
		srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: connIdle}
		closers = append(closers, srv)
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
				logf("http %d: %v", p, err)
			}
		}()
	}
	if ready != nil {
		ready()
	}
	<-ctx.Done()
	return nil
}

func acceptLoop(ctx context.Context, l net.Listener, handle func(net.Conn), wg *sync.WaitGroup) {
	for {
		c, err := l.Accept()
		if err != nil {
			var ne net.Error
			if ctx.Err() == nil && errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return // listener closed
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer c.Close()
			handle(c)
		}()
	}
}

// idleConn extends the deadline on every read so that a silent peer cannot
// hold a connection forever.
type idleConn struct{ net.Conn }

func (c idleConn) Read(b []byte) (int, error) {
	c.SetDeadline(time.Now().Add(connIdle))
	return c.Conn.Read(b)
}

func echo(c net.Conn) {
	io.Copy(c, idleConn{c})
}

// sink reads until the client half-closes, then answers the byte count as 8
// bytes big-endian, so the client measures what arrived, not what it queued.
func sink(c net.Conn) {
	n, err := io.Copy(io.Discard, idleConn{c})
	if err != nil {
		return
	}
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], uint64(n))
	c.Write(b[:])
}

func udpEcho(pc net.PacketConn) {
	buf := make([]byte, 64<<10)
	for {
		n, from, err := pc.ReadFrom(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue // e.g. ICMP errors reported on the socket
		}
		pc.WriteTo(buf[:n], from)
	}
}

// HTTPHandler answers every request 200 with "pod=NAME method=M path=P
// from=CLIENT-IP\n"; /bytes/N, or any path with the query bytes=N, answers N
// bytes (at most MaxBodyBytes) instead. The header X-Pod-Name names the pod
// in both cases.
func HTTPHandler(podName string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, io.LimitReader(r.Body, MaxBodyBytes))
		w.Header().Set("X-Pod-Name", podName)
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		rest, ok := strings.CutPrefix(r.URL.Path, "/bytes/")
		if q := r.URL.Query().Get("bytes"); q != "" {
			rest, ok = q, true
		}
		if ok {
			n, err := strconv.Atoi(rest)
			if err != nil || n < 0 || n > MaxBodyBytes {
				http.Error(w, fmt.Sprintf("bytes: want 0..%d", MaxBodyBytes), http.StatusBadRequest)
				return
			}
			w.Header().Set("Content-Length", strconv.Itoa(n))
			w.WriteHeader(http.StatusOK)
			chunk := []byte(strings.Repeat("x", 4096))
			for n > 0 {
				k := min(n, len(chunk))
				if _, err := w.Write(chunk[:k]); err != nil {
					return
				}
				n -= k
			}
			return
		}
		from, _, _ := net.SplitHostPort(r.RemoteAddr)
		fmt.Fprintf(w, "pod=%s method=%s path=%s from=%s\n", podName, r.Method, r.URL.Path, from)
	})
}
