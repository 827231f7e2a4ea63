package l7policy_test

import (
	"testing"

	"github.com/nodemesh/nodemesh/l7policy"
)

func TestMatch(t *testing.T) {
	userdata := []l7policy.HTTPRule{{Method: "GET", Path: "/userdata/[0-9]+"}}
	tests := []struct {
		name  string
		rules []l7policy.HTTPRule
		req   l7policy.Request
		want  bool
	}{
		{"seed rule allows a number", userdata, l7policy.Request{Method: "GET", Path: "/userdata/42"}, true},
		{"path must match whole", userdata, l7policy.Request{Method: "GET", Path: "/userdata/42abc"}, false},
		{"path must match from the start", userdata, l7policy.Request{Method: "GET", Path: "/x/userdata/42"}, false},
		{"letters refused", userdata, l7policy.Request{Method: "GET", Path: "/userdata/abc"}, false},
		{"query string ignored", userdata, l7policy.Request{Method: "GET", Path: "/userdata/42?x=1"}, true},
		{"method must match whole", userdata, l7policy.Request{Method: "GETX", Path: "/userdata/1"}, false},
		{"method is case-sensitive", userdata, l7policy.Request{Method: "get", Path: "/userdata/1"}, false},
		{"other method refused", userdata, l7policy.Request{Method: "POST", Path: "/userdata/1"}, false},
		{"alternation in method", []l7policy.HTTPRule{{Method: "GET|HEAD"}}, l7policy.Request{Method: "HEAD", Path: "/"}, true},
		{"empty rule matches everything", []l7policy.HTTPRule{{}}, l7policy.Request{Method: "DELETE", Path: "/any"}, true},
		{"no rules match nothing", nil, l7policy.Request{Method: "GET", Path: "/"}, false},
		{"header present", []l7policy.HTTPRule{{Headers: []l7policy.HeaderMatch{l7policy.ParseHeader("X-Token")}}}, l7policy.Request{Method: "GET", Path: "/", Headers: map[string]string{"x-token": "a"}}, true},
		{"header absent", []l7policy.HTTPRule{{Headers: []l7policy.HeaderMatch{l7policy.ParseHeader("X-Token")}}}, l7policy.Request{Method: "GET", Path: "/"}, false},
		{"header value equal", []l7policy.HTTPRule{{Headers: []l7policy.HeaderMatch{l7policy.ParseHeader("X-Token: s3cret")}}}, l7policy.Request{Method: "GET", Headers: map[string]string{"X-TOKEN": "s3cret"}}, true},
		{"header value differs", []l7policy.HTTPRule{{Headers: []l7policy.HeaderMatch{l7policy.ParseHeader("X-Token: s3cret")}}}, l7policy.Request{Method: "GET", Headers: map[string]string{"X-Token": "other"}}, false},
		{"host regex", []l7policy.HTTPRule{{Host: `api\.example\.com`}}, l7policy.Request{Method: "GET", Host: "api.example.com"}, true},
		{"host regex whole", []l7policy.HTTPRule{{Host: `api\.example\.com`}}, l7policy.Request{Method: "GET", Host: "api.example.com.evil"}, false},
		{"any rule of several", []l7policy.HTTPRule{{Method: "POST"}, {Path: "/public/.*"}}, l7policy.Request{Method: "GET", Path: "/public/x"}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rs, err := l7policy.Compile(tt.rules)
			if err != nil {
				t.Fatal(err)
			}
			if _, got := rs.Match(tt.req); got != tt.want {
				t.Errorf("Match(%+v) = %v, want %v", tt.req, got, tt.want)
			}
		})
	}
}

func TestCompileErrorsAndUnion(t *testing.T) {
	if _, err := l7policy.Compile([]l7policy.HTTPRule{{Path: "/[0-9"}}); err == nil {
		t.Fatal("invalid regex accepted")
	}
	a := l7policy.MustCompile([]l7policy.HTTPRule{{Method: "GET"}, {Method: "GET"}})
	if a.Len() != 1 {
		t.Fatalf("duplicates kept: %d rules", a.Len())
	}
	b := l7policy.MustCompile([]l7policy.HTTPRule{{Method: "POST"}, {Method: "GET"}})
	u := l7policy.Union(a, b, nil)
	if u.Len() != 2 {
		t.Fatalf("union has %d rules, want 2", u.Len())
	}
	if _, ok := u.Match(l7policy.Request{Method: "POST"}); !ok {
		t.Fatal("union lost a rule")
	}
	if got := l7policy.Union(a, nil, a); got != a {
		t.Fatal("union of one set should return it")
	}
	if got := (l7policy.HTTPRule{Method: "GET", Path: "/userdata/[0-9]+"}).String(); got != "GET /userdata/[0-9]+" {
		t.Fatalf("String() = %q", got)
	}
}
