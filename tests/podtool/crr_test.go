package podtool_test

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/nodemesh/nodemesh/tests/podtool"
)

func TestCRR(t *testing.T) {
	s := startServers(t)
	ctx := context.Background()
	for _, reset := range []bool{false, true} {
		res := podtool.CRR(ctx, podtool.CRRConfig{To: lo(s.rr), Duration: 300 * time.Millisecond, Conns: 2, Reset: reset})
		if !res.OK || res.Requests < 10 || res.RPS <= 0 || res.P50us <= 0 || res.P99us < res.P50us || res.Errors != 0 || res.Error != "" {
			t.Errorf("crr (reset %v): %+v", reset, res)
		}
	}
	// The tcp echo port serves crr as well.
	if res := podtool.CRR(ctx, podtool.CRRConfig{To: lo(s.tcp), Duration: 100 * time.Millisecond, Conns: 1}); !res.OK {
		t.Errorf("crr to the tcp echo port: %+v", res)
	}
	// Every connection to a closed port fails: counted, and the run is not OK.
	res := podtool.CRR(ctx, podtool.CRRConfig{To: lo(s.closed), Duration: 200 * time.Millisecond, Conns: 1})
	if res.OK || res.Errors < 1 || res.Requests != 0 || res.Error == "" {
		t.Errorf("crr to a closed port: %+v", res)
	}
	// A sink never answers: each connection times out, and the run still
	// ends on time.
	start := time.Now()
	res = podtool.CRR(ctx, podtool.CRRConfig{To: lo(s.bulk), Duration: 300 * time.Millisecond, Conns: 2, Timeout: 100 * time.Millisecond})
	if res.OK || res.Errors < 2 || res.Requests != 0 {
		t.Errorf("crr to a sink: %+v", res)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("crr of 300ms ran %v", d)
	}
	if res := podtool.CRR(ctx, podtool.CRRConfig{To: "nope", Duration: time.Second, Conns: 1}); res.OK || res.Error == "" {
		t.Errorf("crr with a bad address: %+v", res)
	}
}

func TestCRRCLI(t *testing.T) {
	s := startServers(t)
	run := func(args ...string) (int, string, string) {
		var o, e strings.Builder
		code := podtool.Main(context.Background(), args, &o, &e)
		return code, o.String(), e.String()
	}
	code, o, e := run("crr", "--to", lo(s.rr), "--duration", "200ms", "--conns", "2", "--reset")
	var res podtool.CRRResult
	if err := json.Unmarshal([]byte(o), &res); err != nil || code != podtool.ExitOK || !res.OK || res.Requests == 0 || strings.Count(o, "\n") != 1 {
		t.Errorf("crr: exit %d %q %q", code, o, e)
	}
	if code, o, e := run("crr", "--to", lo(s.closed), "--duration", "100ms"); code != podtool.ExitFailed || !strings.Contains(o, `"ok":false`) {
		t.Errorf("crr to a closed port: exit %d %q %q", code, o, e)
	}
	for _, args := range [][]string{
		{"crr"},
		{"crr", "--to", lo(s.rr), "--conns", "0"},
		{"crr", "--to", lo(s.rr), "--duration", "1h"},
		{"crr", "--to", lo(s.rr), "--timeout", "0s"},
		{"crr", "--to", lo(s.rr), "extra"},
	} {
		if code, o, e := run(args...); code != podtool.ExitUsage {
			t.Errorf("%v: exit %d, want %d (%q %q)", args, code, podtool.ExitUsage, o, e)
		}
	}
}
