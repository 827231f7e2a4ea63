package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"strings"
	"testing"

	"github.com/nodemesh/nodemesh/certs"
	"github.com/nodemesh/nodemesh/certs/caserver"
	"github.com/nodemesh/nodemesh/certs/certstest"
)

// startCAServer runs a CA server in process and returns its socket
// directory.
func startCAServer(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "ca") // short: unix socket paths are limited
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	ca := certstest.NewCA(t, certs.CAConfig{TrustDomain: "example.org"}, nil)
	srv, err := caserver.New(caserver.Config{Dir: dir, CA: ca})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	return dir
}

func TestCACommands(t *testing.T) {
	dir := startCAServer(t)
	meshctl := func(t *testing.T, wantCode int, args ...string) string {
		t.Helper()
		var out, errb bytes.Buffer
		if code := run(args, nil, &out, &errb); code != wantCode {
			t.Fatalf("meshctl %s: exit %d, want %d; stderr: %s", strings.Join(args, " "), code, wantCode, errb.String())
		}
		return out.String() + errb.String()
	}
	contains := func(t *testing.T, out string, want ...string) {
		t.Helper()
		for _, w := range want {
			if !strings.Contains(out, w) {
				t.Errorf("output lacks %q:\n%s", w, out)
			}
		}
	}
	statusJSON := func(t *testing.T) caserver.RootsResponse {
		t.Helper()
		var r caserver.RootsResponse
		if err := json.Unmarshal([]byte(meshctl(t, 0, "ca", "status", "--ca-socket-dir", dir, "-o", "json")), &r); err != nil {
			t.Fatal(err)
		}
		return r
	}

	r := statusJSON(t)
	if r.TrustDomain != "example.org" || r.BundleVersion != 1 || len(r.Roots) != 1 || r.Roots[0].State != "active" || r.Roots[0].DropAt != nil {
		t.Fatalf("status before rotation: %+v", r)
	}
	first := r.Roots[0].Serial
	contains(t, meshctl(t, 0, "ca", "status", "--ca-socket-dir", dir),
		"Trust domain:  example.org", "version 1, 1 root(s)", "SERIAL", first, "ACTIVE", "nodemesh root CA example.org")

	out := meshctl(t, 0, "ca", "rotate", "--ca-socket-dir", dir, "--activate-after", "1h")
	contains(t, out, "Added root", "trusted now", "(in 1h0m0s)", "PENDING", "ACTIVE", "version 2, 2 root(s)")

	r = statusJSON(t)
	if len(r.Roots) != 2 || r.Roots[0].Serial != first || r.Roots[0].State != "active" || r.Roots[1].State != "pending" || r.Roots[0].DropAt == nil {
		t.Fatalf("status after rotation: %+v", r)
	}
	if !strings.Contains(out, r.Roots[1].Serial) {
		t.Errorf("rotate output lacks the new root %s:\n%s", r.Roots[1].Serial, out)
	}

	// The CA refuses a root activating before the pending one.
	contains(t, meshctl(t, 2, "ca", "rotate", "--ca-socket-dir", dir, "--activate-after", "0s"), "rotate:", "before that of root")

	var rot caserver.RotateResponse
	if err := json.Unmarshal([]byte(meshctl(t, 0, "ca", "rotate", "--ca-socket-dir", dir, "--activate-after", "2h", "-o", "json")), &rot); err != nil {
		t.Fatal(err)
	}
	if rot.Added.State != "pending" || len(rot.Roots.Roots) != 3 {
		t.Errorf("rotate -o json: %+v", rot)
	}

	t.Run("bad usage", func(t *testing.T) {
		contains(t, meshctl(t, 2, "ca", "rotate", "--ca-socket-dir", dir, "--activate-after", "-1s"), "--activate-after -1s")
		contains(t, meshctl(t, 2, "ca", "status", "--ca-socket-dir", dir, "-o", "yaml"), `--output "yaml"`)
		contains(t, meshctl(t, 2, "ca", "status", "--ca-socket-dir", t.TempDir()), "is nodemesh-ca running?")
		contains(t, meshctl(t, 2, "ca", "status", "extra"), "unknown command")
		contains(t, meshctl(t, 2, "ca", "rotate", "--activate-after", "soon"), "invalid argument")
	})
	contains(t, meshctl(t, 0, "ca"), "status", "rotate")
}
