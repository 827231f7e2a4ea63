package podtool_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nodemesh/nodemesh/tests/podtool"
)

// freePorts finds n ports free for both TCP and UDP on loopback.
func freePorts(t *testing.T, n int) []int {
	t.Helper()
	var ports []int
	for len(ports) < n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		p := l.Addr().(*net.TCPAddr).Port
		u, err := net.ListenPacket("udp", fmt.Sprintf("127.0.0.1:%d", p))
		l.Close()
		if err != nil {
			continue
		}
		u.Close()
		ports = append(ports, p)
	}
	return ports
}

type servers struct {
	tcp, udp, http, rr, bulk, closed int
}

func startServers(t *testing.T) servers {
	t.Helper()
	p := freePorts(t, 6)
	s := servers{tcp: p[0], udp: p[1], http: p[2], rr: p[3], bulk: p[4], closed: p[5]}
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		done <- podtool.Serve(ctx, podtool.ServeConfig{
			TCP: []int{s.tcp}, UDP: []int{s.udp}, HTTP: []int{s.http}, RR: []int{s.rr}, Bulk: []int{s.bulk},
			PodName: "web-1", MaxLifetime: time.Minute,
		}, func() { close(ready) }, &strings.Builder{})
	}()
	select {
	case <-ready:
	case err := <-done:
		t.Fatalf("serve: %v", err)
	}
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	return s
}

func lo(port int) string { return fmt.Sprintf("127.0.0.1:%d", port) }

func TestEcho(t *testing.T) {
	s := startServers(t)
	ctx := context.Background()
	for _, tc := range []struct {
		name       string
		cfg        podtool.ConnectConfig
		wantOK     bool
		wantReason string
	}{
		{"tcp", podtool.ConnectConfig{Proto: "tcp", To: lo(s.tcp), Count: 5, Payload: "hello"}, true, ""},
		{"udp", podtool.ConnectConfig{Proto: "udp", To: lo(s.udp), Count: 5, Payload: "hello"}, true, ""},
		{"rr port echoes", podtool.ConnectConfig{Proto: "tcp", To: lo(s.rr), Count: 1, Payload: "x"}, true, ""},
		{"closed tcp", podtool.ConnectConfig{Proto: "tcp", To: lo(s.closed), Count: 1, Payload: "x"}, false, podtool.ReasonRefused},
		{"closed udp", podtool.ConnectConfig{Proto: "udp", To: lo(s.closed), Count: 1, Payload: "x"}, false, podtool.ReasonRefused},
		{"bulk port does not echo", podtool.ConnectConfig{Proto: "tcp", To: lo(s.bulk), Count: 1, Payload: "x"}, false, podtool.ReasonTimeout},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.cfg.Timeout = 500 * time.Millisecond
			res := podtool.Connect(ctx, tc.cfg)
			if res.OK != tc.wantOK || res.Reason != tc.wantReason {
				t.Fatalf("got %+v, want ok=%v reason=%q", res, tc.wantOK, tc.wantReason)
			}
			if res.OK && res.Rounds != tc.cfg.Count {
				t.Fatalf("%d rounds, want %d", res.Rounds, tc.cfg.Count)
			}
		})
	}
}

func TestHTTP(t *testing.T) {
	s := startServers(t)
	ctx := context.Background()
	get := func(path, method string) podtool.HTTPResult {
		return podtool.HTTP(ctx, podtool.HTTPConfig{URL: "http://" + lo(s.http) + path, Method: method, Timeout: time.Second,
			Headers: []string{"X-Test: 1"}})
	}
	if r := get("/api/v1/x", "POST"); !r.OK || r.Status != 200 || r.Pod != "web-1" || r.Body != "pod=web-1 method=POST path=/api/v1/x from=127.0.0.1\n" {
		t.Errorf("echo: %+v", r)
	}
	if r := get("/bytes/1024", "GET"); !r.OK || r.Status != 200 || r.Bytes != 1024 || len(r.Body) != 256 {
		t.Errorf("/bytes/1024: %+v", r)
	}
	if r := get("/bytes/nope", "GET"); !r.OK || r.Status != 400 {
		t.Errorf("/bytes/nope: %+v", r)
	}
	r := podtool.HTTP(ctx, podtool.HTTPConfig{URL: "http://" + lo(s.closed) + "/", Method: "GET", Timeout: time.Second})
	if r.OK || r.Reason != podtool.ReasonRefused {
		t.Errorf("closed port: %+v", r)
	}
}

func TestLoad(t *testing.T) {
	s := startServers(t)
	ctx := context.Background()
	rr := podtool.RR(ctx, podtool.RRConfig{To: lo(s.rr), Duration: 300 * time.Millisecond, Conns: 2})
	if !rr.OK || rr.Requests < 10 || rr.RPS <= 0 || rr.P50us <= 0 || rr.P99us < rr.P50us || rr.Errors != 0 {
		t.Errorf("rr: %+v", rr)
	}
	bulk := podtool.Bulk(ctx, podtool.BulkConfig{To: lo(s.bulk), Duration: 300 * time.Millisecond})
	if !bulk.OK || bulk.Bytes <= 0 || bulk.BitsPerS <= 0 {
		t.Errorf("bulk: %+v", bulk)
	}
	hrr := podtool.HRR(ctx, podtool.HRRConfig{To: lo(s.http), Path: "/bytes/1024", Duration: 300 * time.Millisecond, Conns: 2})
	if !hrr.OK || hrr.Requests < 10 || hrr.P50us <= 0 || hrr.P99us < hrr.P50us || hrr.Errors != 0 {
		t.Errorf("hrr: %+v", hrr)
	}
	if r := podtool.HRR(ctx, podtool.HRRConfig{To: lo(s.http), Path: "/bytes/x", Duration: 200 * time.Millisecond, Conns: 1}); r.OK || r.Errors != 1 || !strings.Contains(r.Error, "status 400") {
		t.Errorf("hrr with 400 answers: %+v", r)
	}
	if r := podtool.RR(ctx, podtool.RRConfig{To: lo(s.closed), Duration: 200 * time.Millisecond, Conns: 1}); r.OK || r.Errors != 1 {
		t.Errorf("rr to a closed port: %+v", r)
	}
	start := time.Now()
	podtool.RR(ctx, podtool.RRConfig{To: lo(s.rr), Duration: 200 * time.Millisecond, Conns: 1})
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("rr of 200ms ran %v", d)
	}
}

// syncBuf is an io.Writer safe for concurrent use.
type syncBuf struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func TestMainCLI(t *testing.T) {
	ports := freePorts(t, 3)
	ctx, cancel := context.WithCancel(context.Background())
	var out, errOut syncBuf
	done := make(chan int, 1)
	go func() {
		done <- podtool.Main(ctx, []string{"serve", "--tcp", fmt.Sprintf("%d,%d", ports[0], ports[1]), "--sctp", fmt.Sprint(ports[2])}, &out, &errOut)
	}()
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(out.String(), "ready\n") {
		if time.Now().After(deadline) {
			t.Fatalf("serve not ready: %q %q", out.String(), errOut.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	run := func(args ...string) (int, string, string) {
		var o, e strings.Builder
		code := podtool.Main(context.Background(), args, &o, &e)
		return code, o.String(), e.String()
	}
	for _, p := range ports[:2] {
		code, o, e := run("connect", "--to", lo(p), "--payload", "abc", "--count", "2")
		var res podtool.ConnectResult
		if err := json.Unmarshal([]byte(o), &res); err != nil || code != podtool.ExitOK || !res.OK || res.Rounds != 2 || strings.Count(o, "\n") != 1 {
			t.Errorf("connect to %d: exit %d %q %q", p, code, o, e)
		}
	}
	if code, o, e := run("connect", "--proto", "sctp", "--to", lo(ports[2])); podtool.SCTPSupported() {
		if code != podtool.ExitOK {
			t.Errorf("sctp: exit %d %q %q", code, o, e)
		}
	} else if code != podtool.ExitUnsupported || !strings.Contains(o, `"reason":"unsupported"`) || !strings.Contains(errOut.String(), "sctp: port") {
		t.Errorf("sctp without kernel support: exit %d %q %q; serve said %q", code, o, e, errOut.String())
	}
	for _, tc := range []struct {
		args []string
		want int
	}{
		{nil, podtool.ExitUsage},
		{[]string{"nope"}, podtool.ExitUsage},
		{[]string{"connect", "--proto", "icmp", "--to", "127.0.0.1:1"}, podtool.ExitUsage},
		{[]string{"connect", "--to", "127.0.0.1:1", "--timeout", "1h"}, podtool.ExitUsage},
		{[]string{"serve"}, podtool.ExitUsage},
		{[]string{"serve", "--tcp", "0"}, podtool.ExitUsage},
		{[]string{"rr", "--to", lo(ports[0]), "--conns", "100000"}, podtool.ExitUsage},
		{[]string{"bulk", "--to", lo(ports[0]), "--duration", "1h"}, podtool.ExitUsage},
		{[]string{"http"}, podtool.ExitUsage},
		{[]string{"connect", "--to", lo(freePorts(t, 1)[0]), "--timeout", "300ms"}, podtool.ExitFailed},
		{[]string{"http", "--url", "http://" + lo(ports[0]) + "/", "--timeout", "300ms"}, podtool.ExitFailed}, // an echo port is no HTTP server
	} {
		if code, o, e := run(tc.args...); code != tc.want {
			t.Errorf("%v: exit %d, want %d (%q %q)", tc.args, code, tc.want, o, e)
		}
	}
	cancel()
	select {
	case code := <-done:
		if code != podtool.ExitOK {
			t.Errorf("serve exit %d: %s", code, errOut.String())
		}
	case <-time.After(5 * time.Second):
		t.Fatal("serve did not stop when its context ended")
	}
}

func TestServeLifetime(t *testing.T) {
	start := time.Now()
	err := podtool.Serve(context.Background(), podtool.ServeConfig{TCP: freePorts(t, 1), MaxLifetime: 200 * time.Millisecond}, nil, &strings.Builder{})
	if err != nil || time.Since(start) > 3*time.Second {
		t.Errorf("serve with a 200ms lifetime: %v after %v", err, time.Since(start))
	}
}
