package vcluster

import (
	"context"
	"fmt"
	"os"
	"sync"
	"testing"

	"golang.org/x/sys/unix"
)

// Unavailable says why this process cannot build clusters, or "" when it
// can: it must be root and able to create network namespaces.
func Unavailable() string {
	if os.Geteuid() != 0 {
		return "needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN) to create network namespaces"
	}
	if _, err := os.Stat("/proc/self/ns/net"); err != nil {
		return "kernel without network namespaces: " + err.Error()
	}
	err := onThread(func() (bool, error) {
		orig, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			return false, err
		}
		defer orig.Close()
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			return false, err
		}
		if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err != nil {
			return true, err
		}
		return false, nil
	})
	if err != nil {
		return "cannot create a network namespace: " + err.Error()
	}
	return ""
}

// RequireCluster skips the test when Unavailable says so. As root on Linux
// with namespaces it never skips, so a broken setup fails instead of
// hiding.
func RequireCluster(t testing.TB) {
	t.Helper()
	if why := Unavailable(); why != "" {
		t.Skip("vcluster: " + why)
	}
}

var sweepOnce sync.Once

// NewForTest creates a cluster for a test: it skips when clusters are
// unavailable, sweeps leftovers of dead runs once per process, installs
// CleanupOnSignal, and closes the cluster when the test ends, failed or not.
func NewForTest(t testing.TB, cfg Config) *Cluster {
	t.Helper()
	RequireCluster(t)
	sweepOnce.Do(func() {
		if err := Sweep(""); err != nil {
			t.Logf("vcluster: sweeping leftovers of dead runs: %v", err)
		}
	})
	CleanupOnSignal()
	c, err := New(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := c.Close(); err != nil {
			t.Error(err)
		}
	})
	return c
}

// AddPodForTest is AddPod that fails the test on error.
func AddPodForTest(t testing.TB, c *Cluster, pc PodConfig) *Pod {
	t.Helper()
	p, err := c.AddPod(context.Background(), pc)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// RunTests is a TestMain body for packages that use clusters: it closes
// clusters on SIGINT/SIGTERM, runs the tests, closes whatever is still open
// and removes the podtool build. Use: os.Exit(vcluster.RunTests(m)).
func RunTests(m *testing.M) int {
	CleanupOnSignal()
	code := m.Run()
	if err := CloseAll(); err != nil {
		fmt.Fprintln(os.Stderr, "vcluster:", err)
		code = max(code, 1)
	}
	if err := RemovePodtool(); err != nil {
		fmt.Fprintln(os.Stderr, "vcluster: remove podtool:", err)
	}
	return code
}
