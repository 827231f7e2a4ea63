package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// metrics are the agent's Prometheus metrics. Datapath counters and map
// sizes are read from the maps at scrape time.
type metrics struct {
	reg            *prometheus.Registry
	reconcile      prometheus.Histogram
	attachFailures prometheus.Counter
	sourceErrors   prometheus.Counter
}

func newMetrics(a *Agent) *metrics {
	m := &metrics{
		reg: prometheus.NewRegistry(),
		reconcile: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "nodemesh_reconcile_duration_seconds", Help: "Time from a new source state to the datapath programmed.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14),
		}),
		attachFailures: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "nodemesh_attach_failures_total", Help: "Failed attachments of the datapath programs to pod interfaces.",
		}),
		sourceErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "nodemesh_source_errors_total", Help: "Inputs refused (invalid world or policy); the last good state stayed in force.",
		}),
	}
	m.reg.MustRegister(m.reconcile, m.attachFailures, m.sourceErrors, &datapathCollector{a: a})
	return m
}

var (
	packetsDesc = prometheus.NewDesc("nodemesh_datapath_packets_total", "Packets seen by the datapath, by direction, verdict and reason.", []string{"direction", "verdict", "reason"}, nil)
	bytesDesc   = prometheus.NewDesc("nodemesh_datapath_bytes_total", "Bytes seen by the datapath, by direction, verdict and reason.", []string{"direction", "verdict", "reason"}, nil)
	mapDesc     = prometheus.NewDesc("nodemesh_map_entries", "Entries in a datapath map.", []string{"map"}, nil)
	mapMaxDesc  = prometheus.NewDesc("nodemesh_map_max_entries", "Capacity of a datapath map.", []string{"map"}, nil)
	epDesc      = prometheus.NewDesc("nodemesh_endpoints", "Local endpoints, by state.", []string{"state"}, nil)
)

type datapathCollector struct{ a *Agent }

func (c *datapathCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- packetsDesc
	ch <- bytesDesc
	ch <- mapDesc
	ch <- mapMaxDesc
	ch <- epDesc
}

func (c *datapathCollector) Collect(ch chan<- prometheus.Metric) {
	if cs, err := c.a.dp.Counters(); err == nil {
		for _, x := range cs {
			ch <- prometheus.MustNewConstMetric(packetsDesc, prometheus.CounterValue, float64(x.Packets), x.Direction, x.Verdict, x.Reason)
			ch <- prometheus.MustNewConstMetric(bytesDesc, prometheus.CounterValue, float64(x.Bytes), x.Direction, x.Verdict, x.Reason)
		}
	}
	if ms, err := c.a.dp.MapUsage(); err == nil {
		for _, x := range ms {
			ch <- prometheus.MustNewConstMetric(mapDesc, prometheus.GaugeValue, float64(x.Entries), x.Name)
			ch <- prometheus.MustNewConstMetric(mapMaxDesc, prometheus.GaugeValue, float64(x.MaxEntries), x.Name)
		}
	}
	c.a.mu.Lock()
	states := map[string]int{}
	for _, le := range c.a.local {
		states[le.state]++
	}
	c.a.mu.Unlock()
	for s, n := range states {
		ch <- prometheus.MustNewConstMetric(epDesc, prometheus.GaugeValue, float64(n), s)
	}
}

// serve serves /metrics on addr (host:port, or unix:/path) until ctx ends.
func (m *metrics) serve(ctx context.Context, addr string) error {
	network := "tcp"
	if p, ok := strings.CutPrefix(addr, "unix:"); ok {
		network, addr = "unix", p
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return fmt.Errorf("metrics socket dir: %w", err)
		}
		_ = os.Remove(p) // a stale socket of a previous run
	}
	l, err := net.Listen(network, addr)
	if err != nil {
		return fmt.Errorf("listen %s: %w", addr, err)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{}))
	srv := &http.Server{Handler: mux}
	go func() {
		<-ctx.Done()
		srv.Close()
	}()
	if err := srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}
