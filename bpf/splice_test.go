package bpf

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/nodemesh/nodemesh/tests/vcluster"
	"golang.org/x/sys/unix"
)

// The splice tests run real sockets on a one-node virtual cluster
// (tests/vcluster: network namespaces, veths, a cgroup v2 directory per pod
// and one for the node's own programs):
//
//	pod "client" 10.0.1.1 ──lxc── node-1 192.168.10.1 ──lxc── pod "echo" 10.0.1.2
//	                               proxy (host cgroup)
//
// The test binary itself plays every program (TestSpliceHelperProcess):
// an echo server in the echo pod, a proxy in the node's namespace and host
// cgroup, and clients in the client pod. The proxy stands in for the node's
// L7 proxy without the tc redirect: clients dial the node's address, the
// proxy accepts on a transparent listener, and its upstream connection is
// bound transparently to the client's address, as in production, so the
// echo pod sees the client's address (a TPROXY-style socket mark rule and a
// local route in the node deliver the echo pod's replies to it). The splice
// only cares that the two ends of each leg mirror each other's 4-tuple:
//
//	client 10.0.1.1:p ⇄ proxy 192.168.10.1:15001   (pod ⇄ proxy)
//	proxy 10.0.1.1:q ⇄ echo 10.0.1.2:8080           (proxy ⇄ pod)
//
// The pods' cgroup directory is attached as pods, the host cgroup as proxy.

const (
	spliceHelperMarker = "nodemesh-splice-helper"

	splicePortProxy      = 15001 // proxy → echo:8080
	splicePortProxyDefer = 15002 // proxy with TCP_DEFER_ACCEPT → echo:8080
	splicePortProxyReset = 15003 // proxy → echo:8081, which resets
	splicePortEcho       = 8080
	splicePortEchoReset  = 8081 // resets after spliceResetAfter bytes
	splicePortEchoRaw    = 8082 // blocking I/O
	splicePortEchoDirect = 9090 // for pod ⇄ pod: a port no proxied leg uses
	spliceResetAfter     = 256 << 10
)

// TestSpliceHelperProcess is not a test: it is every program the splice
// tests and benchmark run, when they start the test binary with
// "-- nodemesh-splice-helper MODE ...".
func TestSpliceHelperProcess(t *testing.T) {
	args := flag.Args()
	if len(args) == 0 || args[0] != spliceHelperMarker {
		return
	}
	if err := spliceHelper(args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "splice helper:", err)
		os.Exit(1)
	}
	os.Exit(0)
}

func spliceHelper(args []string) error {
	if len(args) == 0 {
		return errors.New("no mode")
	}
	fs := flag.NewFlagSet(args[0], flag.ContinueOnError)
	switch args[0] {
	case "echo":
		listen := fs.String("listen", "", "comma-separated addresses to echo on")
		rawListen := fs.String("raw-listen", "", "comma-separated addresses to echo on with blocking I/O")
		resetListen := fs.String("reset-listen", "", "address where connections are reset after -reset-after bytes")
		resetAfter := fs.Int("reset-after", 0, "")
		if err := fs.Parse(args[1:]); err != nil {
			return err
		}
		return spliceHelperEcho(strings.Split(*listen, ","), strings.Split(*rawListen, ","), *resetListen, *resetAfter)
	case "proxy":
		routes := fs.String("routes", "", "listen=upstream[/defer],...")
		if err := fs.Parse(args[1:]); err != nil {
			return err
		}
		return spliceHelperProxy(strings.Split(*routes, ","))
	case "client":
		var o spliceClientOpts
		fs.StringVar(&o.scenario, "scenario", "echo", "echo, reset, reset-by-server, stream, shutdown or bench")
		fs.StringVar(&o.addr, "addr", "", "")
		fs.IntVar(&o.conns, "conns", 1, "")
		fs.IntVar(&o.par, "par", 1, "connections at once")
		fs.IntVar(&o.size, "size", 64<<10, "payload per connection: up to this many bytes, exactly with -exact")
		fs.BoolVar(&o.exact, "exact", false, "")
		fs.IntVar(&o.chunk, "chunk", 16<<10, "write in chunks of up to this many bytes; 0: one write")
		fs.DurationVar(&o.delay, "delay", 0, "wait this long after connecting before the first write (every other connection with -mix)")
		fs.BoolVar(&o.mix, "mix", false, "")
		fs.DurationVar(&o.pace, "pace", 0, "pause between chunks")
		fs.Uint64Var(&o.seed, "seed", 1, "")
		fs.DurationVar(&o.duration, "duration", 5*time.Second, "bench: how long")
		if err := fs.Parse(args[1:]); err != nil {
			return err
		}
		return spliceHelperClient(o)
	}
	return fmt.Errorf("unknown mode %q", args[0])
}

// ---- echo server ----

func spliceHelperEcho(listen, rawListen []string, resetListen string, resetAfter int) error {
	serve := func(addr string, after int) error {
		ln, err := net.Listen("tcp4", addr)
		if err != nil {
			return err
		}
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				if after < 0 {
					go spliceEchoRaw(c.(*net.TCPConn))
				} else {
					go spliceEchoConn(c.(*net.TCPConn), after)
				}
			}
		}()
		return nil
	}
	for _, a := range listen {
		if err := serve(a, 0); err != nil {
			return err
		}
	}
	for _, a := range rawListen {
		if a == "" {
			continue
		}
		if err := serve(a, -1); err != nil {
			return err
		}
	}
	if resetListen != "" {
		if err := serve(resetListen, resetAfter); err != nil {
			return err
		}
	}
	fmt.Println("ready")
	select {}
}

// spliceEchoConn echoes until the client half-closes, then half-closes too. With
// resetAfter > 0 it resets the connection after echoing that many bytes.
func spliceEchoConn(c *net.TCPConn, resetAfter int) {
	defer c.Close()
	buf := make([]byte, 64<<10)
	total := 0
	for {
		n, err := c.Read(buf)
		if resetAfter > 0 && total+n >= resetAfter {
			c.Write(buf[:resetAfter-total])
			c.SetLinger(0)
			return
		}
		if n > 0 {
			if _, err := c.Write(buf[:n]); err != nil {
				return
			}
			total += n
		}
		if err == io.EOF {
			c.CloseWrite()
			return
		}
		if err != nil {
			return
		}
	}
}

// ---- proxy ----

func spliceTransparentControl(deferAccept bool) func(network, address string, c syscall.RawConn) error {
	return func(network, address string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_IP, unix.IP_TRANSPARENT, 1)
			if serr == nil && deferAccept {
				serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_DEFER_ACCEPT, 5)
			}
		})
		return errors.Join(err, serr)
	}
}

func spliceHelperProxy(routes []string) error {
	for _, r := range routes {
		listen, upstream, ok := strings.Cut(r, "=")
		if !ok {
			return fmt.Errorf("route %q: want listen=upstream", r)
		}
		upstream, deferAccept := strings.CutSuffix(upstream, "/defer")
		lc := net.ListenConfig{Control: spliceTransparentControl(deferAccept)}
		ln, err := lc.Listen(context.Background(), "tcp4", listen)
		if err != nil {
			return err
		}
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				go spliceProxyConn(c.(*net.TCPConn), upstream)
			}
		}()
	}
	fmt.Println("ready")
	select {}
}

// spliceProxyConn forwards a client's connection to upstream from the client's
// own address, as a transparent proxy's original-source upstream does.
func spliceProxyConn(c *net.TCPConn, upstream string) {
	d := net.Dialer{
		LocalAddr: &net.TCPAddr{IP: c.RemoteAddr().(*net.TCPAddr).IP},
		Control:   spliceTransparentControl(false),
		Timeout:   10 * time.Second,
	}
	uc, err := d.Dial("tcp4", upstream)
	if err != nil {
		c.SetLinger(0)
		c.Close()
		return
	}
	u := uc.(*net.TCPConn)
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); splicePipe(u, c) }()
	go func() { defer wg.Done(); splicePipe(c, u) }()
	wg.Wait()
	c.Close()
	u.Close()
}

// splicePipe copies src to dst with plain reads and writes (io.Copy between TCP
// connections would use splice(2), which does not see spliced messages:
// see Splice), passes a
// half-close on, and turns an error on either side into resets of both.
func splicePipe(dst, src *net.TCPConn) {
	buf := make([]byte, 64<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				spliceResetBoth(dst, src)
				return
			}
		}
		if err == io.EOF {
			dst.CloseWrite()
			return
		}
		if err != nil {
			spliceResetBoth(dst, src)
			return
		}
	}
}

func spliceResetBoth(a, b *net.TCPConn) {
	a.SetLinger(0)
	b.SetLinger(0)
	a.Close()
	b.Close()
}

// ---- blocking I/O ----

// spliceBlockingFile turns c into a blocking file (the poller lets go of it).
func spliceBlockingFile(c *net.TCPConn) (*os.File, error) {
	f, err := c.File()
	c.Close()
	if err != nil {
		return nil, err
	}
	f.Fd() // puts the descriptor in blocking mode
	return f, nil
}

// spliceRawRead reads from a blocking socket. It retries EAGAIN, which a
// blocking read should never return but does on a socket in a sockhash
// (tcp_bpf_recvmsg gives up after one wakeup that brought no data).
func spliceRawRead(f *os.File, b []byte) (int, error) {
	for {
		n, err := unix.Read(int(f.Fd()), b)
		if err != unix.EINTR && err != unix.EAGAIN {
			return n, err
		}
	}
}

func spliceRawWrite(f *os.File, b []byte) error {
	for len(b) > 0 {
		n, err := unix.Write(int(f.Fd()), b)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return err
		}
		b = b[n:]
	}
	return nil
}

func spliceEchoRaw(c *net.TCPConn) {
	f, err := spliceBlockingFile(c)
	if err != nil {
		return
	}
	defer f.Close()
	runtime.LockOSThread()
	buf := make([]byte, 64<<10)
	for {
		n, err := spliceRawRead(f, buf)
		if n <= 0 || err != nil {
			return
		}
		if spliceRawWrite(f, buf[:n]) != nil {
			return
		}
	}
}

// ---- clients ----

type spliceClientOpts struct {
	scenario, addr          string
	conns, par, size, chunk int
	exact, mix              bool
	delay, pace, duration   time.Duration
	seed                    uint64
}

func spliceHelperClient(o spliceClientOpts) error {
	switch o.scenario {
	case "echo":
		return spliceClientEcho(o)
	case "reset":
		return spliceClientReset(o)
	case "reset-by-server":
		return spliceClientResetByServer(o)
	case "stream":
		return spliceClientStream(o)
	case "shutdown":
		return spliceClientShutdown(o)
	case "bench":
		return spliceClientBench(o)
	case "blocking":
		return spliceClientBlocking(o)
	}
	return fmt.Errorf("unknown scenario %q", o.scenario)
}

func spliceDial(addr string) (*net.TCPConn, error) {
	c, err := net.DialTimeout("tcp4", addr, 10*time.Second)
	if err != nil {
		return nil, err
	}
	return c.(*net.TCPConn), nil
}

// splicePayload is n random bytes.
func splicePayload(rng *rand.Rand, n int) []byte {
	b := make([]byte, n)
	for i := 0; i < n; i += 8 {
		v := rng.Uint64()
		for j := 0; j < 8 && i+j < n; j++ {
			b[i+j] = byte(v >> (8 * j))
		}
	}
	return b
}

// spliceReadExpect reads from c until EOF and checks that exactly want arrived,
// byte for byte. It reports the first difference.
func spliceReadExpect(c *net.TCPConn, want []byte) error {
	buf := make([]byte, 64<<10)
	off := 0
	for {
		n, err := c.Read(buf)
		if n > 0 {
			if off+n > len(want) {
				return fmt.Errorf("received %d bytes, more than the %d sent", off+n, len(want))
			}
			for i := range n {
				if buf[i] != want[off+i] {
					return fmt.Errorf("byte %d differs: got %#02x, sent %#02x (of %d bytes)", off+i, buf[i], want[off+i], len(want))
				}
			}
			off += n
		}
		if err == io.EOF {
			if off != len(want) {
				return fmt.Errorf("EOF after %d of %d bytes", off, len(want))
			}
			return nil
		}
		if err != nil {
			return fmt.Errorf("read after %d of %d bytes: %w", off, len(want), err)
		}
	}
}

// spliceEchoOne sends a random payload over one connection, in random chunks,
// while reading the echo; then half-closes and expects exactly the payload
// back, and EOF.
func spliceEchoOne(o spliceClientOpts, i int, started func()) error {
	rng := rand.New(rand.NewChaCha8(spliceSeed(o.seed, uint64(i))))
	size := o.size
	if !o.exact {
		size = 1 + rng.IntN(o.size)
	}
	data := splicePayload(rng, size)
	c, err := spliceDial(o.addr)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(90 * time.Second))
	if o.delay > 0 && (!o.mix || i%2 == 1) {
		time.Sleep(o.delay)
	}
	rerr := make(chan error, 1)
	go func() { rerr <- spliceReadExpect(c, data) }()
	for off := 0; off < len(data); {
		n := len(data) - off
		if o.chunk > 0 {
			n = min(n, 1+rng.IntN(o.chunk))
		}
		if _, err := c.Write(data[off : off+n]); err != nil {
			return fmt.Errorf("write at %d of %d: %w", off, len(data), err)
		}
		if off == 0 {
			started()
		}
		off += n
		if o.pace > 0 {
			time.Sleep(o.pace)
		}
	}
	if err := c.CloseWrite(); err != nil {
		return err
	}
	return <-rerr
}

func spliceSeed(a, b uint64) (s [32]byte) {
	for i := range 8 {
		s[i] = byte(a >> (8 * i))
		s[8+i] = byte(b >> (8 * i))
	}
	return s
}

func spliceClientEcho(o spliceClientOpts) error {
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		errs     []error
		once     sync.Once
		next     atomic.Int64
		received atomic.Int64
	)
	started := func() { once.Do(func() { fmt.Println("started") }) }
	for range o.par {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= o.conns {
					return
				}
				if err := spliceEchoOne(o, i, started); err != nil {
					mu.Lock()
					errs = append(errs, fmt.Errorf("connection %d: %w", i, err))
					mu.Unlock()
				}
				received.Add(1)
			}
		}()
	}
	wg.Wait()
	if len(errs) > 0 {
		return fmt.Errorf("%d of %d connections failed, first: %w", len(errs), o.conns, errs[0])
	}
	fmt.Printf("ok conns=%d\n", received.Load())
	return nil
}

// spliceClientReset resets connections the proxy has spliced, then checks that
// the path still works.
func spliceClientReset(o spliceClientOpts) error {
	for i := range o.conns {
		rng := rand.New(rand.NewChaCha8(spliceSeed(o.seed, uint64(i))))
		data := splicePayload(rng, 64<<10)
		c, err := spliceDial(o.addr)
		if err != nil {
			return err
		}
		c.SetDeadline(time.Now().Add(30 * time.Second))
		if _, err := c.Write(data); err != nil {
			return err
		}
		got := make([]byte, len(data))
		if _, err := io.ReadFull(c, got); err != nil {
			return fmt.Errorf("connection %d: read echo: %w", i, err)
		}
		if string(got) != string(data) {
			return fmt.Errorf("connection %d: echo differs", i)
		}
		// Unread data in flight or not, this is a reset.
		c.Write(data[:1024])
		c.SetLinger(0)
		c.Close()
	}
	o.conns, o.size = 4, 256<<10
	return spliceClientEcho(o)
}

// spliceClientResetByServer streams to an echo that resets after
// spliceResetAfter bytes: the client must see the reset (or EOF) and have
// received a prefix of what it sent, never other bytes.
func spliceClientResetByServer(o spliceClientOpts) error {
	for i := range o.conns {
		_, recvd, err := spliceStreamUntilEnd(o, i, 4<<20)
		if err != nil {
			return fmt.Errorf("connection %d: %w", i, err)
		}
		if recvd > spliceResetAfter {
			return fmt.Errorf("connection %d: %d bytes echoed, but the echo resets after %d", i, recvd, spliceResetAfter)
		}
	}
	fmt.Println("ok")
	return nil
}

// spliceStreamUntilEnd writes up to limit random bytes while reading the echo,
// until the connection ends by a reset or EOF, and returns how many bytes
// went each way. What arrived must be a prefix of what was sent. It fails
// if the connection is still open after 30 seconds.
func spliceStreamUntilEnd(o spliceClientOpts, i, limit int) (sent, received int, err error) {
	rng := rand.New(rand.NewChaCha8(spliceSeed(o.seed, uint64(i))))
	data := splicePayload(rng, limit)
	c, err := spliceDial(o.addr)
	if err != nil {
		return 0, 0, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	var (
		recvd   atomic.Int64
		printed sync.Once
	)
	rerr := make(chan error, 1)
	go func() {
		buf := make([]byte, 64<<10)
		off := 0
		for {
			n, err := c.Read(buf)
			for j := range n {
				if buf[j] != data[off+j] {
					rerr <- fmt.Errorf("byte %d differs: got %#02x, sent %#02x", off+j, buf[j], data[off+j])
					return
				}
			}
			off += n
			recvd.Store(int64(off))
			if off >= 1<<20 {
				printed.Do(func() { fmt.Println("streaming") })
			}
			if err != nil {
				if errors.Is(err, os.ErrDeadlineExceeded) {
					rerr <- fmt.Errorf("still open after 30 s (%d bytes back)", off)
					return
				}
				rerr <- nil // reset or EOF: the end we wait for
				return
			}
		}
	}()
	for sent < len(data) {
		n := min(16<<10, len(data)-sent)
		if _, err := c.Write(data[sent : sent+n]); err != nil {
			break // the reset reached the writer first
		}
		sent += n
		if o.pace > 0 {
			time.Sleep(o.pace)
		}
	}
	if sent == len(data) {
		c.CloseWrite()
	}
	if err := <-rerr; err != nil {
		return sent, int(recvd.Load()), err
	}
	if int(recvd.Load()) > sent {
		return sent, int(recvd.Load()), fmt.Errorf("received %d bytes, sent %d", recvd.Load(), sent)
	}
	return sent, int(recvd.Load()), nil
}

// spliceClientStream streams until the peer dies (the test kills it once the
// client prints "streaming"): the connection must end before the stream
// does.
func spliceClientStream(o spliceClientOpts) error {
	o.pace = time.Millisecond
	const limit = 64 << 20 // 4 s at 16 KiB per millisecond, at most
	sent, recvd, err := spliceStreamUntilEnd(o, 0, limit)
	if err != nil {
		return err
	}
	if recvd == limit {
		return fmt.Errorf("all %d bytes echoed: the peer did not die", limit)
	}
	fmt.Printf("ok sent=%d received=%d\n", sent, recvd)
	return nil
}

// spliceClientShutdown checks TCP's answers on a spliced connection: a write
// after the client's half-close fails with EPIPE, and the echo still
// arrives in full.
func spliceClientShutdown(o spliceClientOpts) error {
	c, err := spliceDial(o.addr)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	time.Sleep(o.delay)
	data := splicePayload(rand.New(rand.NewChaCha8(spliceSeed(o.seed, 0))), 4096)
	if _, err := c.Write(data); err != nil {
		return err
	}
	got := make([]byte, len(data))
	if _, err := io.ReadFull(c, got); err != nil {
		return err
	}
	if err := c.CloseWrite(); err != nil {
		return err
	}
	if _, err := c.Write(data); !errors.Is(err, syscall.EPIPE) {
		return fmt.Errorf("write after half-close: %v, want EPIPE", err)
	}
	if n, err := c.Read(got); err != io.EOF {
		return fmt.Errorf("read after half-close: %d bytes, %v; want EOF", n, err)
	}
	fmt.Println("ok")
	return nil
}

// spliceClientBlocking exchanges small messages on a blocking socket while
// signals hit the process, and counts reads that fail with EAGAIN.
func spliceClientBlocking(o spliceClientOpts) error {
	c, err := spliceDial(o.addr)
	if err != nil {
		return err
	}
	time.Sleep(o.delay)
	f, err := spliceBlockingFile(c)
	if err != nil {
		return err
	}
	defer f.Close()
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGUSR1)
	stop := make(chan struct{})
	go func() {
		for {
			select {
			case <-stop:
				return
			case <-sig:
			case <-time.After(200 * time.Microsecond):
				syscall.Kill(os.Getpid(), syscall.SIGUSR1)
			}
		}
	}()
	defer close(stop)
	runtime.LockOSThread()
	var eagain, eintr, ok int
	buf := make([]byte, o.size)
	deadline := time.Now().Add(o.duration)
	for time.Now().Before(deadline) {
		if err := spliceRawWrite(f, buf); err != nil {
			return err
		}
		for got := 0; got < len(buf); {
			n, err := unix.Read(int(f.Fd()), buf[got:])
			switch {
			case err == unix.EAGAIN:
				eagain++
				continue
			case err == unix.EINTR:
				eintr++
				continue
			case err != nil || n == 0:
				return fmt.Errorf("read: %d, %v", n, err)
			}
			got += n
		}
		ok++
	}
	fmt.Printf("ok exchanges=%d eagain=%d eintr=%d\n", ok, eagain, eintr)
	return nil
}

// spliceClientBench runs request/response exchanges of o.size bytes on o.conns
// persistent connections for o.duration and prints the rate.
func spliceClientBench(o spliceClientOpts) error {
	conns := make([]*net.TCPConn, o.conns)
	for i := range conns {
		c, err := spliceDial(o.addr)
		if err != nil {
			return err
		}
		defer c.Close()
		conns[i] = c
	}
	var (
		total atomic.Int64
		wg    sync.WaitGroup
		errs  = make(chan error, len(conns))
	)
	deadline := time.Now().Add(o.duration)
	start := time.Now()
	for _, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			req := make([]byte, o.size)
			resp := make([]byte, o.size)
			c.SetDeadline(deadline.Add(10 * time.Second))
			n := int64(0)
			for time.Now().Before(deadline) {
				if _, err := c.Write(req); err != nil {
					errs <- err
					return
				}
				if _, err := io.ReadFull(c, resp); err != nil {
					errs <- err
					return
				}
				n++
			}
			total.Add(n)
		}()
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		return err
	}
	fmt.Printf("rate %.1f\n", float64(total.Load())/time.Since(start).Seconds())
	return nil
}

// ---- the test bed ----

type spliceBed struct {
	c           *vcluster.Cluster
	node        *vcluster.Node
	client      *vcluster.Pod
	echo        *vcluster.Pod
	s           *Splice
	pinDir      string
	exe         string
	proxyProc   *vcluster.Process
	echoProc    *vcluster.Process
	proxyAddr   string // node:splicePortProxy
	echoAddr    string
	echoDirect  string // echo pod's pod ⇄ pod port
	attachedPod string
}

// newSpliceBed builds the cluster, loads the splice (attached) and starts
// the echo server and the proxy; everything goes when the test ends.
func newSpliceBed(tb testing.TB) *spliceBed {
	tb.Helper()
	requirePrivileges(tb)
	exe, err := os.Executable()
	if err != nil {
		tb.Fatal(err)
	}
	c := vcluster.NewForTest(tb, vcluster.Config{Nodes: []vcluster.NodeConfig{{Name: "node-1"}}})
	b := &spliceBed{c: c, node: c.Node("node-1"), exe: exe}
	b.client = vcluster.AddPodForTest(tb, c, vcluster.PodConfig{Name: "client", Node: "node-1"})
	b.echo = vcluster.AddPodForTest(tb, c, vcluster.PodConfig{Name: "echo", Node: "node-1"})
	b.proxyAddr = net.JoinHostPort(b.node.IP.String(), strconv.Itoa(splicePortProxy))
	b.echoAddr = net.JoinHostPort(b.echo.IP.String(), strconv.Itoa(splicePortEcho))
	b.echoDirect = net.JoinHostPort(b.echo.IP.String(), strconv.Itoa(splicePortEchoDirect))

	// The proxy's upstream sockets are bound to the client's address: the
	// echo pod's replies to it must be delivered locally, not routed to
	// the client pod (what TPROXY setups do).
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, cmd := range [][]string{
		{"iptables", "-t", "mangle", "-A", "PREROUTING", "-p", "tcp", "-m", "socket", "--transparent", "-j", "MARK", "--set-mark", "0x1/0x1"},
		{"ip", "rule", "add", "fwmark", "0x1/0x1", "lookup", "100"},
		{"ip", "route", "add", "local", "0.0.0.0/0", "dev", "lo", "table", "100"},
	} {
		if out, err := b.node.Run(ctx, cmd...); err != nil {
			tb.Fatalf("%s: %v\n%s", strings.Join(cmd, " "), err, out)
		}
	}

	root := bpffsDir(tb)
	b.pinDir = filepath.Join(root, "node-1")
	s, err := OpenSplice(b.pinDir)
	requireFeature(tb, "open splice", err)
	b.s = s
	tb.Cleanup(func() {
		if err := b.s.Remove(); err != nil {
			tb.Errorf("remove splice: %v", err)
		}
	})
	b.attach(tb)
	b.startEcho(tb)
	b.startProxy(tb)
	return b
}

func (b *spliceBed) attach(tb testing.TB) {
	tb.Helper()
	if err := b.s.AttachPods(b.node.CgroupPath); err != nil {
		tb.Fatal(err)
	}
	if err := b.s.AttachProxy(b.node.HostCgroupPath); err != nil {
		tb.Fatal(err)
	}
}

func (b *spliceBed) detach(tb testing.TB) {
	tb.Helper()
	for _, dir := range []string{b.node.CgroupPath, b.node.HostCgroupPath} {
		if err := b.s.Detach(dir); err != nil {
			tb.Fatal(err)
		}
	}
}

func (b *spliceBed) helperArgs(mode string, args ...string) []string {
	return append([]string{b.exe, "-test.run=^TestSpliceHelperProcess$", "--", spliceHelperMarker, mode}, args...)
}

func (b *spliceBed) startEcho(tb testing.TB) {
	tb.Helper()
	p, err := b.echo.Start(context.Background(), b.helperArgs("echo",
		"-listen", fmt.Sprintf(":%d,:%d", splicePortEcho, splicePortEchoDirect), "-raw-listen", fmt.Sprintf(":%d", splicePortEchoRaw),
		"-reset-listen", fmt.Sprintf(":%d", splicePortEchoReset), "-reset-after", strconv.Itoa(spliceResetAfter))...)
	if err != nil {
		tb.Fatal(err)
	}
	b.waitReady(tb, p)
	b.echoProc = p
}

func (b *spliceBed) startProxy(tb testing.TB) {
	tb.Helper()
	node, echo := b.node.IP.String(), b.echo.IP.String()
	routes := []string{
		fmt.Sprintf("%s:%d=%s:%d", node, splicePortProxy, echo, splicePortEcho),
		fmt.Sprintf("%s:%d=%s:%d/defer", node, splicePortProxyDefer, echo, splicePortEcho),
		fmt.Sprintf("%s:%d=%s:%d", node, splicePortProxyReset, echo, splicePortEchoReset),
	}
	p, err := b.node.Start(context.Background(), b.helperArgs("proxy", "-routes", strings.Join(routes, ","))...)
	if err != nil {
		tb.Fatal(err)
	}
	b.waitReady(tb, p)
	b.proxyProc = p
}

func (b *spliceBed) waitReady(tb testing.TB, p *vcluster.Process) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := p.WaitReady(ctx); err != nil {
		tb.Fatal(err)
	}
}

// run runs a client scenario in the client pod and returns its output.
func (b *spliceBed) run(tb testing.TB, args ...string) string {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	out, err := b.client.Exec(ctx, b.helperArgs("client", args...)...)
	if err != nil {
		tb.Fatalf("client %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// start starts a client scenario and waits until it prints line.
func (b *spliceBed) start(tb testing.TB, line string, args ...string) *vcluster.Process {
	tb.Helper()
	p, err := b.client.Start(context.Background(), b.helperArgs("client", args...)...)
	if err != nil {
		tb.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := p.WaitForLine(ctx, line); err != nil {
		tb.Fatal(err)
	}
	return p
}

// wait waits for a started client and checks that it printed "ok".
func (b *spliceBed) wait(tb testing.TB, p *vcluster.Process, what string) {
	tb.Helper()
	select {
	case <-p.Done():
	case <-time.After(2 * time.Minute):
		p.Stop(time.Second)
		tb.Fatalf("%s: client still running after 2 minutes", what)
	}
	if err := p.Wait(); err != nil || !strings.Contains(p.Stdout(), "ok") {
		tb.Fatalf("%s: client: %v\nstdout: %s\nstderr: %s", what, err, p.Stdout(), p.Stderr())
	}
}

func (b *spliceBed) stats(tb testing.TB) SpliceStats {
	tb.Helper()
	st, err := b.s.Stats()
	if err != nil {
		tb.Fatal(err)
	}
	return st
}

// vethBytes is what the host side of a pod's veth carried, both ways.
func (b *spliceBed) vethBytes(tb testing.TB, p *vcluster.Pod) uint64 {
	tb.Helper()
	h, err := b.node.Netlink()
	if err != nil {
		tb.Fatal(err)
	}
	defer h.Close()
	l, err := h.LinkByName(p.HostIfname)
	if err != nil {
		tb.Fatal(err)
	}
	st := l.Attrs().Statistics
	return st.RxBytes + st.TxBytes
}

func (s SpliceStats) sub(o SpliceStats) SpliceStats {
	return SpliceStats{
		PodSockets: s.PodSockets - o.PodSockets, ProxySockets: s.ProxySockets - o.ProxySockets,
		InsertFailed: s.InsertFailed - o.InsertFailed, SplicedSockets: s.SplicedSockets - o.SplicedSockets,
		TCPSockets: s.TCPSockets - o.TCPSockets, Messages: s.Messages - o.Messages, Bytes: s.Bytes - o.Bytes,
		TCPMessages: s.TCPMessages - o.TCPMessages, TCPBytes: s.TCPBytes - o.TCPBytes, PeerGone: s.PeerGone - o.PeerGone,
		PodOther: s.PodOther - o.PodOther,
	}
}

// ---- tests ----

// TestSplice runs traffic through the proxy and between the pods on one
// bed, scenario after scenario, and checks every byte, the counters and
// the veths.
func TestSplice(t *testing.T) {
	b := newSpliceBed(t)
	proxy := func(port int) string { return net.JoinHostPort(b.node.IP.String(), strconv.Itoa(port)) }

	t.Run("spliced", func(t *testing.T) {
		// One connection that waits before sending, so that both ends
		// of both legs are in the map: every byte of it is redirected,
		// and the client's veth carries only handshakes and FINs.
		before, vc, ve := b.stats(t), b.vethBytes(t, b.client), b.vethBytes(t, b.echo)
		const size = 8 << 20
		b.run(t, "-addr", proxy(splicePortProxy), "-size", strconv.Itoa(size), "-exact", "-chunk", "65536", "-delay", "100ms")
		d := b.stats(t).sub(before)
		dc, de := b.vethBytes(t, b.client)-vc, b.vethBytes(t, b.echo)-ve
		t.Logf("counters %+v; veth bytes: client %d, echo %d", d, dc, de)
		if d.PodSockets != 2 || d.ProxySockets != 2 {
			t.Errorf("sockets in the map: %d pod, %d proxy; want 2 and 2", d.PodSockets, d.ProxySockets)
		}
		// The proxy writes upstream as soon as its connect returns: the
		// echo pod's socket may not be in the map yet, and that one
		// direction then stays on TCP. The other three are spliced.
		if d.SplicedSockets < 3 || d.Bytes < 3*size {
			t.Errorf("spliced %d sockets and %d bytes, want at least 3 and %d", d.SplicedSockets, d.Bytes, 3*size)
		}
		if dc > size/16 {
			t.Errorf("the client's veth carried %d bytes for a spliced connection of 2×%d", dc, size)
		}
		if d.SplicedSockets == 4 && de > size/16 {
			t.Errorf("the echo pod's veth carried %d bytes for a spliced connection of 2×%d", de, size)
		}
	})

	t.Run("pod-to-pod-not-spliced", func(t *testing.T) {
		before, vc := b.stats(t), b.vethBytes(t, b.client)
		const size = 4 << 20
		b.run(t, "-addr", b.echoDirect, "-size", strconv.Itoa(size), "-exact", "-delay", "100ms")
		d := b.stats(t).sub(before)
		dc := b.vethBytes(t, b.client) - vc
		t.Logf("counters %+v; client veth bytes %d", d, dc)
		if d.PodSockets != 0 || d.ProxySockets != 0 || d.PodOther != 2 {
			t.Errorf("sockets in the map: %d pod, %d proxy, %d pod sockets left alone; want 0, 0, 2", d.PodSockets, d.ProxySockets, d.PodOther)
		}
		if d.SplicedSockets != 0 || d.Bytes != 0 || d.TCPMessages != 0 {
			t.Errorf("pod ⇄ pod: %d spliced sockets, %d redirected bytes, %d messages seen; want none", d.SplicedSockets, d.Bytes, d.TCPMessages)
		}
		if dc < 2*size {
			t.Errorf("the client's veth carried %d bytes, want at least 2×%d", dc, size)
		}
	})

	t.Run("pod-to-pod-untouched", func(t *testing.T) {
		// A socket in the map reads through tcp_bpf, whose blocking
		// reads fail with EAGAIN when a signal wakes them: a pod's
		// connections that do not go through the proxy must never see
		// that. Signals hit the client every 200 µs.
		before := b.stats(t)
		out := b.run(t, "-scenario", "blocking", "-addr", net.JoinHostPort(b.echo.IP.String(), strconv.Itoa(splicePortEchoRaw)),
			"-size", "100", "-duration", "1s")
		t.Logf("%s", strings.TrimSpace(out))
		if !strings.Contains(out, " eagain=0 ") {
			t.Errorf("blocking reads on a pod ⇄ pod connection failed with EAGAIN: %s", out)
		}
		if d := b.stats(t).sub(before); d.PodSockets != 0 || d.PodOther != 2 {
			t.Errorf("counters %+v: want both pod sockets left alone", d)
		}
	})

	t.Run("concurrent-immediate-sends", func(t *testing.T) {
		before := b.stats(t)
		out := b.run(t, "-addr", proxy(splicePortProxy), "-conns", "300", "-par", "24", "-size", "262144", "-chunk", "16384", "-seed", "2")
		d := b.stats(t).sub(before)
		t.Logf("%s counters %+v", strings.TrimSpace(out), d)
		if d.ProxySockets != 600 || d.PodSockets != 600 {
			t.Errorf("sockets in the map: %d pod, %d proxy; want 600 each", d.PodSockets, d.ProxySockets)
		}
		if d.SplicedSockets == 0 || d.Messages == 0 {
			t.Errorf("nothing spliced: %+v", d)
		}
		if d.SplicedSockets+d.TCPSockets != 1200 {
			t.Errorf("%d spliced + %d TCP sockets, want every one of 1200 decided", d.SplicedSockets, d.TCPSockets)
		}
	})

	t.Run("mixed-delays", func(t *testing.T) {
		b.run(t, "-addr", proxy(splicePortProxy), "-conns", "64", "-par", "16", "-size", "1048576", "-chunk", "65536", "-delay", "2ms", "-mix", "-seed", "3")
	})

	t.Run("large-writes", func(t *testing.T) {
		// One write of 16 MiB, far above the socket buffers, per
		// connection, four at once.
		before := b.stats(t)
		b.run(t, "-addr", proxy(splicePortProxy), "-conns", "4", "-par", "4", "-size", strconv.Itoa(16<<20), "-exact", "-chunk", "0", "-delay", "20ms", "-seed", "4")
		d := b.stats(t).sub(before)
		t.Logf("counters %+v", d)
		if d.Bytes < 2*4*(16<<20) {
			t.Errorf("redirected %d bytes, want at least the client legs' 2×4×16 MiB", d.Bytes)
		}
	})

	t.Run("first-bytes-through-tcp", func(t *testing.T) {
		// With TCP_DEFER_ACCEPT the proxy's socket is created only when
		// the client's first data segment arrives: each client socket's
		// first message finds no peer and goes through TCP, and every
		// later one must too, although the peer is in the map by then
		// (a redirected message would overtake bytes still in flight or
		// unread). The replies may be spliced.
		const conns, size = 32, 1 << 20
		before, vc := b.stats(t), b.vethBytes(t, b.client)
		b.run(t, "-addr", proxy(splicePortProxyDefer), "-conns", strconv.Itoa(conns), "-par", "8", "-size", strconv.Itoa(size), "-exact", "-chunk", "4096", "-seed", "5")
		d := b.stats(t).sub(before)
		dc := b.vethBytes(t, b.client) - vc
		t.Logf("counters %+v; client veth bytes %d", d, dc)
		if d.TCPSockets < conns {
			t.Errorf("%d sockets on TCP, want at least the %d clients", d.TCPSockets, conns)
		}
		if dc < conns*size {
			t.Errorf("the client's veth carried %d bytes, want at least the %d the clients sent", dc, conns*size)
		}
	})

	t.Run("half-close", func(t *testing.T) {
		// Every echo scenario half-closes; here also a write after the
		// half-close must fail as TCP fails it.
		b.run(t, "-scenario", "shutdown", "-addr", proxy(splicePortProxy), "-delay", "20ms")
	})

	t.Run("reset-by-client", func(t *testing.T) {
		b.run(t, "-scenario", "reset", "-addr", proxy(splicePortProxy), "-conns", "20", "-seed", "6")
	})

	t.Run("reset-by-server", func(t *testing.T) {
		b.run(t, "-scenario", "reset-by-server", "-addr", proxy(splicePortProxyReset), "-conns", "10", "-seed", "7")
	})

	t.Run("peer-death", func(t *testing.T) {
		for _, victim := range []string{"echo", "proxy"} {
			t0 := time.Now()
			p := b.start(t, "streaming", "-scenario", "stream", "-addr", proxy(splicePortProxy), "-seed", "8")
			t.Logf("streaming after %v", time.Since(t0))
			if victim == "echo" {
				b.echoProc.Stop(0)
			} else {
				b.proxyProc.Stop(0)
			}
			b.wait(t, p, "stream when the "+victim+" dies")
			t.Logf("ended after %v: %s", time.Since(t0), p.Stdout())
			if victim == "echo" {
				b.startEcho(t)
			} else {
				b.startProxy(t)
			}
		}
		b.run(t, "-addr", proxy(splicePortProxy), "-conns", "8", "-par", "8", "-seed", "9")
	})

	t.Run("restart", func(t *testing.T) {
		// A second OpenSplice on the same pins adopts them while a
		// connection streams; closing the first changes nothing.
		p := b.start(t, "started", "-addr", proxy(splicePortProxy), "-size", strconv.Itoa(4<<20), "-exact", "-chunk", "16384", "-pace", "5ms", "-delay", "20ms", "-seed", "10")
		s2, err := OpenSplice(b.pinDir)
		if err != nil {
			t.Fatal(err)
		}
		if err := b.s.Close(); err != nil {
			t.Fatal(err)
		}
		b.s = s2
		b.attach(t) // idempotent
		b.wait(t, p, "stream across a restart")
		before := b.stats(t)
		b.run(t, "-addr", proxy(splicePortProxy), "-conns", "8", "-par", "8", "-delay", "20ms", "-seed", "11")
		if d := b.stats(t).sub(before); d.SplicedSockets < 8*3 {
			t.Errorf("after the restart: %+v, want new connections spliced", d)
		}
		ents, err := os.ReadDir(filepath.Join(b.pinDir, spliceDir, spliceLinksDir))
		if err != nil || len(ents) != 3 {
			t.Errorf("links after attaching twice: %v %v, want msg and one per cgroup", ents, err)
		}
	})

	t.Run("detach-and-remove", func(t *testing.T) {
		// Detached, new connections are not spliced; removed, neither,
		// and a connection spliced before keeps going.
		b.detach(t)
		before, vc := b.stats(t), b.vethBytes(t, b.client)
		b.run(t, "-addr", proxy(splicePortProxy), "-size", strconv.Itoa(1<<20), "-exact", "-delay", "20ms", "-seed", "12")
		if d := b.stats(t).sub(before); d != (SpliceStats{}) {
			t.Errorf("detached, the counters moved: %+v", d)
		}
		if dc := b.vethBytes(t, b.client) - vc; dc < 2<<20 {
			t.Errorf("detached, the client's veth carried %d bytes, want the 2 MiB", dc)
		}
		b.attach(t)
		p := b.start(t, "started", "-addr", proxy(splicePortProxy), "-size", strconv.Itoa(4<<20), "-exact", "-chunk", "16384", "-pace", "5ms", "-delay", "20ms", "-seed", "13")
		time.Sleep(200 * time.Millisecond)
		if err := b.s.Remove(); err != nil {
			t.Fatal(err)
		}
		if _, err := os.Stat(filepath.Join(b.pinDir, spliceDir)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("pins after Remove: %v", err)
		}
		b.wait(t, p, "stream across Remove")
		// The bed's cleanup removes again: start afresh for it.
		s, err := OpenSplice(b.pinDir)
		if err != nil {
			t.Fatal(err)
		}
		b.s = s
	})
}

// TestSpliceAttachErrors checks the attach API's refusals and idempotence.
func TestSpliceAttachErrors(t *testing.T) {
	root := bpffsDir(t)
	s, err := OpenSplice(filepath.Join(root, "node-1"))
	requireFeature(t, "open splice", err)
	t.Cleanup(func() {
		if err := s.Remove(); err != nil {
			t.Errorf("remove: %v", err)
		}
	})
	cg := spliceCgroup2(t)
	pods, proxy := filepath.Join(cg, "pods"), filepath.Join(cg, "proxy")
	for _, d := range []string{pods, proxy} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.AttachPods(pods); err != nil {
		t.Fatal(err)
	}
	if err := s.AttachPods(pods); err != nil {
		t.Fatalf("attach twice: %v", err)
	}
	if err := s.AttachProxy(proxy); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name    string
		do      func() error
		wantErr string
	}{
		{"proxy on the pods' directory", func() error { return s.AttachProxy(pods) }, "attached as pods already"},
		{"pods on the proxy's directory", func() error { return s.AttachPods(proxy) }, "attached as proxy already"},
		{"not a cgroup", func() error { return s.AttachPods(t.TempDir()) }, "not a cgroup v2 directory"},
		{"missing", func() error { return s.AttachProxy(filepath.Join(cg, "nope")) }, "no such file"},
		{"relative pin dir", func() error { _, err := OpenSplice("bpffs/node-1"); return err }, "absolute path"},
		{"pin dir not on bpffs", func() error { _, err := OpenSplice(t.TempDir()); return err }, "not on a bpf filesystem"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.do()
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("got %v, want an error containing %q", err, tc.wantErr)
			}
		})
	}
	ents, _ := os.ReadDir(filepath.Join(root, "node-1", spliceDir, spliceLinksDir))
	if len(ents) != 3 {
		t.Errorf("links: %d, want msg, pods and proxy", len(ents))
	}
	if err := s.Detach(pods); err != nil {
		t.Fatal(err)
	}
	if err := s.AttachProxy(pods); err != nil {
		t.Errorf("attach as proxy after detaching as pods: %v", err)
	}
}

// spliceCgroup2 is a fresh cgroup v2 directory for one test, on a cgroup2
// mount of the test's own (the machines mount cgroup v1 at /sys/fs/cgroup);
// it is removed, and the mount undone, when the test ends.
func spliceCgroup2(t *testing.T) string {
	t.Helper()
	requirePrivileges(t)
	mnt := t.TempDir()
	if err := unix.Mount("none", mnt, "cgroup2", 0, ""); err != nil {
		t.Fatalf("mount cgroup2: %v", err)
	}
	dir, err := os.MkdirTemp(mnt, "nodemesh-splice-")
	if err != nil {
		unix.Unmount(mnt, unix.MNT_DETACH)
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ents, _ := os.ReadDir(dir)
		for _, e := range ents {
			if !e.IsDir() {
				continue // the cgroup's interface files go with it
			}
			if err := os.Remove(filepath.Join(dir, e.Name())); err != nil {
				t.Errorf("remove cgroup: %v", err)
			}
		}
		if err := os.Remove(dir); err != nil {
			t.Errorf("remove cgroup: %v", err)
		}
		if err := unix.Unmount(mnt, unix.MNT_DETACH); err != nil {
			t.Errorf("unmount cgroup2: %v", err)
		}
	})
	return dir
}
