package proxytest

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// NetnsChildEnv is set in the environment of a test re-run by RunInNetns.
const NetnsChildEnv = "NODEMESH_TEST_NETNS_CHILD"

// InNetnsChild reports whether this process is the re-run of a test in
// its namespace.
func InNetnsChild() bool { return os.Getenv(NetnsChildEnv) != "" }

// RunInNetns runs the tests matching the -test.run pattern run again, in
// this test binary, inside a network namespace it creates (and deletes
// when the test ends) after running the setup commands there; the test
// fails if the re-run does. Every socket of the scenario then lives in
// the namespace: the host's network is not touched. It needs root.
func RunInNetns(t *testing.T, run string, setup ...[]string) {
	t.Helper()
	ns := fmt.Sprintf("nmtest-%d", os.Getpid())
	cmd := func(args ...string) {
		t.Helper()
		if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	cmd("ip", "netns", "add", ns)
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", ns).CombinedOutput(); err != nil {
			t.Errorf("ip netns del %s: %v\n%s", ns, err, out)
		}
	})
	for _, args := range setup {
		cmd(append([]string{"ip", "netns", "exec", ns}, args...)...)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	args := []string{"netns", "exec", ns, os.Args[0], "-test.run", run, "-test.count", "1"}
	if testing.Verbose() {
		args = append(args, "-test.v")
	}
	c := exec.CommandContext(ctx, "ip", args...)
	c.Env = append(os.Environ(), NetnsChildEnv+"=1")
	out, err := c.CombinedOutput()
	t.Logf("in netns %s:\n%s", ns, out)
	if err != nil {
		t.Fatalf("the scenario in the namespace failed: %v", err)
	}
}

// RequireNetnsRoot skips the test unless it runs as root (what the test
// does without it: why), and fails it when a command its namespace setup
// runs is missing (scripts/deps.sh installs them).
func RequireNetnsRoot(t *testing.T, why string, tools ...string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: " + why + " (CI runs as root)")
	}
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s is missing (scripts/deps.sh installs iproute2, iptables and procps): %v", tool, err)
		}
	}
}
