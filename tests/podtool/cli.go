package podtool

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"
)

// Exit codes of the binary.
const (
	ExitOK          = 0
	ExitFailed      = 1 // the exchange failed: refused, timeout, wrong answer
	ExitUsage       = 2
	ExitUnsupported = 3 // the kernel lacks the protocol (SCTP)
)

const usage = `usage: nodemesh-podtool COMMAND [flags]

commands:
  serve    --tcp PORT[,PORT] --udp PORT --http PORT --sctp PORT --rr PORT --bulk PORT
           echo servers, HTTP (200 naming $POD_NAME, /bytes/N), rr and bulk sinks;
           prints "ready" once every listener is up
  connect  --proto tcp|udp|sctp --to IP:PORT [--timeout 1s] [--count N] [--payload S]
           echo round trips; one JSON line; exit 0 ok, 1 failed, 3 protocol unsupported
  http     --url URL [--method GET] [--header 'K: V']... [--body S] [--timeout 2s] [--expect-status N]
           one request; one JSON line with the status; exit 0 when a response
           arrived (and had the expected status, if given)
  rr       --to IP:PORT [--duration 5s] [--conns 1]    TCP request/response rate, JSON {rps, p50_us, p99_us}
  hrr      --to IP:PORT [--path /] [--duration 5s] [--conns 1] [--rate R]
           HTTP/1.1 keep-alive request rate (GET, every answer must be 200), JSON as rr
  crr      --to IP:PORT [--duration 5s] [--conns 1] [--timeout 1s] [--reset]
           a new TCP connection per request (connect, request, echo, close);
           JSON {rps, p50_us, p99_us}: connections/s, latency without the close
  bulk     --to IP:PORT [--duration 5s]                TCP throughput, JSON {bits_per_s}
  tls      --to IP:PORT --cert PEM --key PEM [--alpn nodemesh-mtls] [--timeout 2s] [--payload S]
           TLS 1.3 echo presenting a client certificate; JSON {ok, stage, peer_id}
`

// Main runs the command line args (without the program name) and returns the
// exit code. ctx ends a running server.
func Main(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return ExitUsage
	}
	cmd, args := args[0], args[1:]
	fs := flag.NewFlagSet(cmd, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, usage) }
	printJSON := func(v any) {
		b, _ := json.Marshal(v)
		fmt.Fprintln(stdout, string(b))
	}
	parse := func() bool {
		if err := fs.Parse(args); err != nil {
			return false
		}
		if fs.NArg() > 0 {
			fmt.Fprintf(stderr, "%s: unexpected argument %q\n", cmd, fs.Arg(0))
			return false
		}
		return true
	}
	switch cmd {
	case "serve":
		var cfg ServeConfig
		fs.Var((*portList)(&cfg.TCP), "tcp", "TCP echo `ports` (comma-separated, repeatable)")
		fs.Var((*portList)(&cfg.UDP), "udp", "UDP echo `ports`")
		fs.Var((*portList)(&cfg.HTTP), "http", "HTTP `ports`")
		fs.Var((*portList)(&cfg.SCTP), "sctp", "SCTP echo `ports` (skipped when the kernel lacks SCTP)")
		fs.Var((*portList)(&cfg.RR), "rr", "request/response (echo) `ports` for rr")
		fs.Var((*portList)(&cfg.Bulk), "bulk", "bulk sink `ports` for bulk")
		fs.StringVar(&cfg.PodName, "pod-name", os.Getenv("POD_NAME"), "name in HTTP answers")
		fs.DurationVar(&cfg.MaxLifetime, "max-lifetime", DefaultMaxLifetime, "stop by itself after this long")
		if !parse() {
			return ExitUsage
		}
		if err := cfg.Validate(); err != nil {
			fmt.Fprintf(stderr, "serve: %v\n", err)
			return ExitUsage
		}
		err := Serve(ctx, cfg, func() { fmt.Fprintln(stdout, "ready") }, stderr)
		if err != nil {
			fmt.Fprintf(stderr, "serve: %v\n", err)
			return ExitFailed
		}
		return ExitOK
	case "connect":
		cfg := ConnectConfig{Proto: "tcp", Timeout: time.Second, Count: 1, Payload: "nodemesh"}
		fs.StringVar(&cfg.Proto, "proto", cfg.Proto, "tcp, udp or sctp")
		fs.StringVar(&cfg.To, "to", "", "server `IP:PORT`")
		fs.DurationVar(&cfg.Timeout, "timeout", cfg.Timeout, "for the whole exchange")
		fs.IntVar(&cfg.Count, "count", cfg.Count, "round trips")
		fs.StringVar(&cfg.Payload, "payload", cfg.Payload, "bytes to echo")
		if !parse() {
			return ExitUsage
		}
		if err := cfg.Validate(); err != nil {
			fmt.Fprintf(stderr, "connect: %v\n", err)
			return ExitUsage
		}
		res := Connect(ctx, cfg)
		printJSON(res)
		switch {
		case res.OK:
			return ExitOK
		case res.Reason == ReasonUnsupported:
			return ExitUnsupported
		}
		return ExitFailed
	case "http":
		cfg := HTTPConfig{Method: "GET", Timeout: 2 * time.Second}
		var expect int
		fs.StringVar(&cfg.URL, "url", "", "request `URL`")
		fs.StringVar(&cfg.Method, "method", cfg.Method, "request method")
		fs.Var((*stringList)(&cfg.Headers), "header", "request header `'Name: value'` (repeatable)")
		fs.StringVar(&cfg.Body, "body", "", "request body")
		fs.DurationVar(&cfg.Timeout, "timeout", cfg.Timeout, "for the whole request")
		fs.IntVar(&expect, "expect-status", 0, "exit 1 unless the response has this status")
		if !parse() {
			return ExitUsage
		}
		if cfg.URL == "" {
			fmt.Fprintln(stderr, "http: --url is required")
			return ExitUsage
		}
		res := HTTP(ctx, cfg)
		printJSON(res)
		if !res.OK || (expect != 0 && res.Status != expect) {
			return ExitFailed
		}
		return ExitOK
	case "rr":
		cfg := RRConfig{Duration: 5 * time.Second, Conns: 1}
		fs.StringVar(&cfg.To, "to", "", "rr server `IP:PORT`")
		fs.DurationVar(&cfg.Duration, "duration", cfg.Duration, "how long to run")
		fs.IntVar(&cfg.Conns, "conns", cfg.Conns, "parallel connections")
		if !parse() {
			return ExitUsage
		}
		if err := checkRun(cfg.To, cfg.Duration, cfg.Conns); err != nil {
			fmt.Fprintf(stderr, "rr: %v\n", err)
			return ExitUsage
		}
		res := RR(ctx, cfg)
		printJSON(res)
		if !res.OK {
			return ExitFailed
		}
		return ExitOK
	case "hrr":
		cfg := HRRConfig{Duration: 5 * time.Second, Conns: 1, Path: "/"}
		fs.StringVar(&cfg.To, "to", "", "HTTP server `IP:PORT`")
		fs.StringVar(&cfg.Path, "path", cfg.Path, "request `path`")
		fs.DurationVar(&cfg.Duration, "duration", cfg.Duration, "how long to run")
		fs.IntVar(&cfg.Conns, "conns", cfg.Conns, "parallel keep-alive connections")
		fs.Float64Var(&cfg.Rate, "rate", 0, "requests per second in all (0: as fast as the answers come)")
		if !parse() {
			return ExitUsage
		}
		if err := checkRun(cfg.To, cfg.Duration, cfg.Conns); err != nil || cfg.Rate < 0 {
			fmt.Fprintf(stderr, "hrr: %v (rate %g)\n", err, cfg.Rate)
			return ExitUsage
		}
		res := HRR(ctx, cfg)
		printJSON(res)
		if !res.OK {
			return ExitFailed
		}
		return ExitOK
	case "crr":
		cfg := CRRConfig{Duration: 5 * time.Second, Conns: 1, Timeout: time.Second}
		fs.StringVar(&cfg.To, "to", "", "echo server `IP:PORT` (an rr or tcp port)")
		fs.DurationVar(&cfg.Duration, "duration", cfg.Duration, "how long to run")
		fs.IntVar(&cfg.Conns, "conns", cfg.Conns, "parallel workers, each one connection at a time")
		fs.DurationVar(&cfg.Timeout, "timeout", cfg.Timeout, "for one connection's exchange")
		fs.BoolVar(&cfg.Reset, "reset", false, "close with RST (no TIME_WAIT left on the client)")
		if !parse() {
			return ExitUsage
		}
		err := checkRun(cfg.To, cfg.Duration, cfg.Conns)
		if cfg.Timeout <= 0 || cfg.Timeout > MaxTimeout {
			err = errors.Join(err, fmt.Errorf("timeout %s: want (0, %s]", cfg.Timeout, MaxTimeout))
		}
		if err != nil {
			fmt.Fprintf(stderr, "crr: %v\n", err)
			return ExitUsage
		}
		res := CRR(ctx, cfg)
		printJSON(res)
		if !res.OK {
			return ExitFailed
		}
		return ExitOK
	case "tls":
		cfg := TLSConfig{ALPN: "nodemesh-mtls", Timeout: 2 * time.Second, Payload: "nodemesh"}
		fs.StringVar(&cfg.To, "to", "", "server `IP:PORT`")
		fs.StringVar(&cfg.CertFile, "cert", "", "client certificate chain (PEM `file`)")
		fs.StringVar(&cfg.KeyFile, "key", "", "client key (PEM `file`)")
		fs.StringVar(&cfg.ALPN, "alpn", cfg.ALPN, "ALPN protocol to offer")
		fs.DurationVar(&cfg.Timeout, "timeout", cfg.Timeout, "for the whole exchange")
		fs.StringVar(&cfg.Payload, "payload", cfg.Payload, "bytes to echo")
		if !parse() {
			return ExitUsage
		}
		if err := cfg.validate(); err != nil {
			fmt.Fprintf(stderr, "tls: %v\n", err)
			return ExitUsage
		}
		res := TLSEcho(ctx, cfg)
		printJSON(res)
		if !res.OK {
			return ExitFailed
		}
		return ExitOK
	case "bulk":
		cfg := BulkConfig{Duration: 5 * time.Second}
		fs.StringVar(&cfg.To, "to", "", "bulk server `IP:PORT`")
		fs.DurationVar(&cfg.Duration, "duration", cfg.Duration, "how long to send")
		if !parse() {
			return ExitUsage
		}
		if err := checkRun(cfg.To, cfg.Duration, 1); err != nil {
			fmt.Fprintf(stderr, "bulk: %v\n", err)
			return ExitUsage
		}
		res := Bulk(ctx, cfg)
		printJSON(res)
		if !res.OK {
			return ExitFailed
		}
		return ExitOK
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return ExitOK
	}
	fmt.Fprintf(stderr, "unknown command %q\n%s", cmd, usage)
	return ExitUsage
}

// portList is a flag of comma-separated ports that may repeat.
type portList []int

func (p *portList) String() string {
	if p == nil {
		return ""
	}
	s := make([]string, len(*p))
	for i, v := range *p {
		s[i] = strconv.Itoa(v)
	}
	return strings.Join(s, ",")
}

func (p *portList) Set(v string) error {
	for f := range strings.SplitSeq(v, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 || n > 65535 {
			return errors.New("want ports 1-65535, comma-separated")
		}
		*p = append(*p, n)
	}
	return nil
}

// stringList is a repeatable string flag.
type stringList []string

func (s *stringList) String() string {
	if s == nil {
		return ""
	}
	return strings.Join(*s, "; ")
}

func (s *stringList) Set(v string) error {
	*s = append(*s, v)
	return nil
}
