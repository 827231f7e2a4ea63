package bpf

import (
	"fmt"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// BenchmarkSplice measures the request/response rate of a pod through the
// node's proxy to an echo pod (the test bed of TestSplice: the client
// dials the proxy, which forwards on its own connection to the echo pod),
// on persistent connections, with the splice attached and without it:
// 1-byte and 1 KiB messages, one connection or eight at once.
//
//	go test -run '^$' -bench Splice ./bpf/
//
// Rounds alternate (off-on, on-off, ...); each round opens fresh
// connections, which the splice takes or not depending on whether it is
// attached when they are established. The ratio reported is the median
// of the rounds' ratios (spliced over TCP, measured back to back), which
// drift in the machine's load affects least; the rates are the medians.
// SPLICE_BENCH_ROUNDS (default 5) and SPLICE_BENCH_SECONDS (default 2)
// set the rounds and the length of each measurement. The measurement is
// made once, whatever b.N is. Progress goes to stderr.
func BenchmarkSplice(b *testing.B) {
	bed := newSpliceBed(b)
	rounds := spliceBenchEnv(b, "SPLICE_BENCH_ROUNDS", 5)
	seconds := spliceBenchEnv(b, "SPLICE_BENCH_SECONDS", 2)
	addr := net.JoinHostPort(bed.node.IP.String(), strconv.Itoa(splicePortProxy))
	for _, conns := range []int{1, 8} {
		for _, size := range []int{1, 1024} {
			name := fmt.Sprintf("conns=%d/size=%d", conns, size)
			b.Run(name, func(b *testing.B) {
				var on, off, ratios []float64
				for r := range rounds {
					order := []bool{false, true}
					if r%2 == 1 {
						order = []bool{true, false}
					}
					rate := map[bool]float64{}
					for _, spliced := range order {
						if spliced {
							bed.attach(b)
						} else {
							bed.detach(b)
						}
						before := bed.stats(b)
						out := bed.run(b, "-scenario", "bench", "-addr", addr, "-conns", strconv.Itoa(conns),
							"-size", strconv.Itoa(size), "-duration", fmt.Sprintf("%ds", seconds))
						d := bed.stats(b).sub(before)
						v, err := strconv.ParseFloat(strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(out), "rate")), 64)
						if err != nil {
							b.Fatalf("bench client output %q: %v", out, err)
						}
						rate[spliced] = v
						fmt.Fprintf(os.Stderr, "splice bench %s: round %d/%d %-6s %8.0f req/s (spliced sockets %d, redirected messages %d)\n",
							name, r+1, rounds, map[bool]string{true: "splice", false: "tcp"}[spliced], v, d.SplicedSockets, d.Messages)
						if spliced && d.SplicedSockets != uint64(4*conns) {
							b.Logf("round %d: %d of the %d sockets spliced", r+1, d.SplicedSockets, 4*conns)
						}
					}
					on, off = append(on, rate[true]), append(off, rate[false])
					ratios = append(ratios, rate[true]/rate[false])
				}
				ratio := spliceMedian(ratios)
				fmt.Fprintf(os.Stderr, "splice bench %s: median %.0f req/s spliced, %.0f req/s through TCP; median ratio %.2fx (rounds: %s)\n",
					name, spliceMedian(on), spliceMedian(off), ratio, spliceFormat(ratios))
				b.ReportMetric(spliceMedian(on), "req/s-spliced")
				b.ReportMetric(spliceMedian(off), "req/s-tcp")
				b.ReportMetric(ratio, "x-splice")
				b.ReportMetric(0, "ns/op")
			})
		}
	}
	bed.attach(b)
}

func spliceFormat(v []float64) string {
	s := make([]string, len(v))
	for i, x := range v {
		s[i] = strconv.FormatFloat(x, 'f', 2, 64)
	}
	return strings.Join(s, " ")
}

func spliceBenchEnv(b *testing.B, name string, def int) int {
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 {
		b.Fatalf("%s=%q: want a positive integer", name, v)
	}
	return n
}

func spliceMedian(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s) == 0 {
		return 0
	}
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}
