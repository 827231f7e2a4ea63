package l7bench

import (
	"slices"
	"time"
)

// Run is one measured run: wrk's figures and the CPU time the proxy
// under test used meanwhile (zero without a proxy).
type Run struct {
	WrkResult
	ProxyUser, ProxySys time.Duration
}

// CPUPerRequest is the proxy's CPU time (user and kernel) per request.
func (r Run) CPUPerRequest() time.Duration {
	if r.Requests == 0 {
		return 0
	}
	return (r.ProxyUser + r.ProxySys) / time.Duration(r.Requests)
}

// Metric is one figure of a run.
type Metric struct {
	Name  string // rps, p50, p99, cpu_per_req
	Unit  string // req/s, us
	Value func(Run) float64
	// ProxyOnly figures exist only for runs through a proxy.
	ProxyOnly bool
}

func micros(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }

// Metrics are the figures the benchmark reports. cpu_per_req is the
// proxy's own CPU time (its threads, user and kernel; not the softirq work
// the kernel may do on its CPU for other sockets): on a machine shared
// with other work it varies less than the rate.
var Metrics = []Metric{
	{"rps", "req/s", func(r Run) float64 { return r.RPS }, false},
	{"p50", "us", func(r Run) float64 { return micros(r.P50) }, false},
	{"p99", "us", func(r Run) float64 { return micros(r.P99) }, false},
	{"cpu_per_req", "us", func(r Run) float64 { return micros(r.CPUPerRequest()) }, true},
}

// Median is the median of vs (the lower middle one of an even count).
func Median(vs []float64) float64 {
	if len(vs) == 0 {
		return 0
	}
	s := slices.Clone(vs)
	slices.Sort(s)
	return s[(len(s)-1)/2]
}

// Paired compares a configuration with its baseline measured in the same
// rounds: each round gives one ratio, value / baseline.
type Paired struct {
	// Value and Base are the figures of the round whose ratio is the
	// median; Ratio = Value / Base.
	Value, Base, Ratio float64
	// Lo and Hi are the lowest and highest ratio of all rounds.
	Lo, Hi float64
}

// Pair pairs the i-th value with the i-th baseline; both must be of the
// same length, and no baseline zero.
func Pair(values, bases []float64) Paired {
	type pr struct{ v, b, r float64 }
	var ps []pr
	for i := range values {
		if i < len(bases) && bases[i] != 0 {
			ps = append(ps, pr{values[i], bases[i], values[i] / bases[i]})
		}
	}
	if len(ps) == 0 {
		return Paired{}
	}
	slices.SortFunc(ps, func(a, b pr) int {
		switch {
		case a.r < b.r:
			return -1
		case a.r > b.r:
			return 1
		}
		return 0
	})
	m := ps[(len(ps)-1)/2]
	return Paired{Value: m.v, Base: m.b, Ratio: m.r, Lo: ps[0].r, Hi: ps[len(ps)-1].r}
}
