package policycheck

import (
	"strings"
	"testing"

	"github.com/nodemesh/nodemesh/policy"
)

func TestDecodeFlow(t *testing.T) {
	tests := []struct {
		name, line string
		want       policy.Flow
		method     string // of the HTTP request, when there is one
		err        string
	}{
		{name: "number port, default TCP", line: `{"from":"x/a","to":"y/b","port":80}`, want: policy.Flow{From: "x/a", To: "y/b", Proto: policy.ProtoTCP, Port: 80}},
		{name: "port as a digit string", line: `{"from":"x/a","to":"y/b","port":"8080","protocol":"udp"}`, want: policy.Flow{From: "x/a", To: "y/b", Proto: policy.ProtoUDP, Port: 8080}},
		{name: "named port", line: `{"from":"x/a","to":"10.0.0.1","port":"serve-80-tcp","protocol":"SCTP"}`, want: policy.Flow{From: "x/a", To: "10.0.0.1", Proto: policy.ProtoSCTP, PortName: "serve-80-tcp"}},
		{name: "http defaults", line: `{"from":"x/a","to":"y/b","port":80,"http":{}}`, want: policy.Flow{From: "x/a", To: "y/b", Proto: policy.ProtoTCP, Port: 80}, method: "GET"},
		{name: "icmp type 0", line: `{"from":"x/a","to":"y/b","port":0,"protocol":"ICMP"}`, want: policy.Flow{From: "x/a", To: "y/b", Proto: policy.ProtoICMP}},
		{name: "port 0", line: `{"from":"x/a","to":"y/b","port":0}`, err: "port: 0 is not a valid port"},
		{name: "port too big", line: `{"from":"x/a","to":"y/b","port":65536}`, err: "port: 65536 is not a valid port"},
		{name: "negative port", line: `{"from":"x/a","to":"y/b","port":-5}`, err: "port: -5 is not a port"},
		{name: "empty port name", line: `{"from":"x/a","to":"y/b","port":""}`, err: "port: empty"},
		{name: "port is an object", line: `{"from":"x/a","to":"y/b","port":{}}`, err: "port: {} is not a port"},
		{name: "missing from and to", line: `{"port":80}`, err: "missing from, to"},
		{name: "protocol ANY", line: `{"from":"x/a","to":"y/b","port":80,"protocol":"ANY"}`, err: `protocol: "ANY" is not a protocol`},
		{name: "unknown field, suggestion", line: `{"from":"x/a","to":"y/b","prot":80}`, err: `unknown field "prot" (did you mean "protocol"?)`},
		{name: "unknown http field", line: `{"from":"x/a","to":"y/b","port":80,"http":{"paht":"/"}}`, err: `http: unknown field "paht" (did you mean "path"?)`},
		{name: "wrong type", line: `{"from":"x/a","to":"y/b","port":80,"http":"GET /"}`, err: "http: must be an object, got a string"},
		{name: "syntax", line: `{"from":"x/a",,}`, err: "not valid JSON: invalid character"},
		{name: "two objects", line: `{"from":"x/a","to":"y/b","port":80}{}`, err: "after the flow object"},
		{name: "not an object", line: `["x/a"]`, err: "not a JSON object"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f, err := decodeFlow([]byte(tc.line))
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("error %v, want one containing %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			http := f.HTTP
			f.HTTP = nil
			if f != tc.want {
				t.Errorf("got %+v, want %+v", f, tc.want)
			}
			if tc.method != "" && (http == nil || http.Method != tc.method || http.Path != "/") {
				t.Errorf("request %+v, want %s /", http, tc.method)
			}
		})
	}
}

func TestReadFlowsLines(t *testing.T) {
	in := "\ufeff{\"from\":\"x/a\",\"to\":\"y/b\",\"port\":80}\r\n\n  \n{\"from\":\"x/a\",\"to\":\"y/b\"}\n{\"from\":\"x/a\",\"to\":\"y/b\",\"port\":81}"
	flows, errs := readFlows(strings.NewReader(in))
	if len(flows) != 2 || flows[0].line != 1 || flows[1].line != 5 || flows[1].flow.Port != 81 {
		t.Errorf("flows %+v", flows)
	}
	if len(errs) != 1 || errs[0].line != 4 {
		t.Errorf("errors %+v", errs)
	}
	long := `{"from":"` + strings.Repeat("a", maxLine) + `"}`
	if _, errs := readFlows(strings.NewReader(long)); len(errs) != 1 || !strings.Contains(errs[0].err.Error(), "longer than") {
		t.Errorf("long line: %+v", errs)
	}
}
