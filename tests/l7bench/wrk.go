package l7bench

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// Load is one wrk run's parameters.
type Load struct {
	Threads, Conns int
	Duration       time.Duration // whole seconds
	CPUs           string        // taskset list for wrk, "" for none
	Path           string        // request path, e.g. /userdata/42
}

// WrkResult is what one wrk run measured.
type WrkResult struct {
	Duration time.Duration
	Requests int64
	Bytes    int64
	RPS      float64
	// Latencies of the requests, from wrk's histogram (µs precision).
	P50, P90, P99, Max time.Duration
	Errors             WrkErrors
	Output             string // wrk's own report (with --latency)
}

// WrkErrors are wrk's error counts; Status counts responses other than
// 2xx and 3xx.
type WrkErrors struct {
	Connect, Read, Write, Status, Timeout int64
}

// Total is the sum of the counts.
func (e WrkErrors) Total() int64 { return e.Connect + e.Read + e.Write + e.Status + e.Timeout }

// wrkScript prints wrk's summary as one JSON line, at full precision (the
// text report rounds latencies to two decimals of its unit).
const wrkScript = `done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('L7BENCH {"duration_us":%d,"requests":%d,"bytes":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d,"err_connect":%d,"err_read":%d,"err_write":%d,"err_status":%d,"err_timeout":%d}\n',
    summary.duration, summary.requests, summary.bytes,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
    e.connect, e.read, e.write, e.status, e.timeout))
end
`

// Wrk runs wrk from the client namespace against addr (host:port) with
// HTTP/1.1 keep-alive connections.
func (t *Topology) Wrk(ctx context.Context, addr string, l Load) (WrkResult, error) {
	bin, err := exec.LookPath("wrk")
	if err != nil {
		return WrkResult{}, fmt.Errorf("wrk: %w (scripts/deps.sh installs it)", err)
	}
	secs := int(l.Duration.Round(time.Second) / time.Second)
	if secs < 1 {
		secs = 1
	}
	script := filepath.Join(t.Dir, "summary.lua")
	if _, err := os.Stat(script); err != nil {
		if err := os.WriteFile(script, []byte(wrkScript), 0o644); err != nil {
			return WrkResult{}, err
		}
	}
	args := []string{"netns", "exec", t.Client}
	if l.CPUs != "" {
		args = append(args, "taskset", "-c", l.CPUs)
	}
	args = append(args, bin, "-t", strconv.Itoa(l.Threads), "-c", strconv.Itoa(l.Conns),
		"-d", strconv.Itoa(secs)+"s", "--timeout", "5s", "--latency", "-s", script, "http://"+addr+l.Path)
	ctx, cancel := context.WithTimeout(ctx, time.Duration(secs)*time.Second+30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "ip", args...).CombinedOutput()
	if err != nil {
		return WrkResult{}, fmt.Errorf("wrk %s: %w: %s", addr, err, out)
	}
	return parseWrk(string(out))
}

func parseWrk(out string) (WrkResult, error) {
	var m map[string]int64 // the script's summary line
	var report strings.Builder
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		line := sc.Text()
		if j, ok := strings.CutPrefix(line, "L7BENCH "); ok {
			if err := json.Unmarshal([]byte(j), &m); err != nil {
				return WrkResult{}, fmt.Errorf("wrk summary %q: %w", j, err)
			}
			continue
		}
		report.WriteString(line)
		report.WriteByte('\n')
	}
	if m["duration_us"] <= 0 {
		return WrkResult{}, fmt.Errorf("no summary in wrk's output:\n%s", out)
	}
	us := func(k string) time.Duration { return time.Duration(m[k]) * time.Microsecond }
	return WrkResult{
		Duration: us("duration_us"), Requests: m["requests"], Bytes: m["bytes"],
		RPS: float64(m["requests"]) / us("duration_us").Seconds(),
		P50: us("p50_us"), P90: us("p90_us"), P99: us("p99_us"), Max: us("max_us"),
		Errors: WrkErrors{m["err_connect"], m["err_read"], m["err_write"], m["err_status"], m["err_timeout"]},
		Output: report.String(),
	}, nil
}

// Check reports a run whose requests failed or got the wrong answer:
// every request of a run is an allowed one and must get 200 with the
// backend's body.
func (r WrkResult) Check() error {
	if r.Requests == 0 {
		return fmt.Errorf("no request completed\n%s", r.Output)
	}
	if n := r.Errors.Total(); n > 0 {
		return fmt.Errorf("%d errors (%+v) in %d requests\n%s", n, r.Errors, r.Requests, r.Output)
	}
	if per := r.Bytes / r.Requests; per < BodySize {
		return fmt.Errorf("%d bytes per response, want at least the %d-byte body\n%s", per, BodySize, r.Output)
	}
	return nil
}
