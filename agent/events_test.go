package agent

import (
	"net/netip"
	"testing"

	"github.com/nodemesh/nodemesh/xds"
)

// TestL7Event checks how a proxy's access log entry reads as a flow event.
func TestL7Event(t *testing.T) {
	base := xds.L7Event{Node: "n", Src: netip.MustParseAddrPort("10.0.1.1:4000"), Dst: netip.MustParseAddrPort("10.0.2.1:80"),
		Method: "GET", Path: "/userdata/42"}
	for _, c := range []struct {
		dir, verdict        string
		status              int
		wantDir, wantV, why string
	}{
		{xds.DirectionInbound, xds.VerdictAllowed, 200, "ingress", "forwarded", ReasonL7Allowed},
		{xds.DirectionOutbound, xds.VerdictDenied, 403, "egress", "dropped", ReasonL7Denied},
		{xds.DirectionInbound, "", 431, "ingress", "dropped", ReasonL7Unchecked},
		{xds.DirectionInbound, "", 0, "ingress", "dropped", ReasonL7Unchecked},
	} {
		e := base
		e.Direction, e.Verdict, e.Status = c.dir, c.verdict, c.status
		fe := l7Event(e)
		if fe.Direction != c.wantDir || fe.Verdict != c.wantV || fe.Reason != c.why || fe.Proto != "HTTP" ||
			fe.L7 == nil || fe.L7.Status != c.status || fe.Src.IP != "10.0.1.1" || fe.DstPort != 80 {
			t.Errorf("%s %q %d: got %+v %+v", c.dir, c.verdict, c.status, fe, fe.L7)
		}
	}
}
