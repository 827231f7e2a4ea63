package vcluster_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nodemesh/nodemesh/tests/vcluster"
)

// helperEnv makes the test binary, started again by these tests, run
// TestHelperProcess as a test that owns a cluster and then fails, waits to be
// signalled, or waits to be killed.
const helperEnv = "VCLUSTER_TEST_HELPER"

// TestHelperProcess is not a test of its own: it is the child the cleanup
// tests start. It makes a cluster with a pod, a running server and a bpffs
// dir, prints the cluster's name, then does what helperEnv says.
func TestHelperProcess(t *testing.T) {
	mode := os.Getenv(helperEnv)
	if mode == "" {
		t.Skip("run by the cleanup tests as a child process")
	}
	setup := func(t *testing.T) {
		c := vcluster.NewForTest(t, vcluster.Config{})
		tool := vcluster.BuildPodtool(t)
		p := vcluster.AddPodForTest(t, c, vcluster.PodConfig{Name: "a", Node: "node-1"})
		serve(t, tool, p)
		if _, err := c.Node("node-2").BPFFSDir(); err != nil {
			t.Fatal(err)
		}
		fmt.Printf("\nVCLUSTER_NAME=%s\n", c.Name())
	}
	switch mode {
	case "failnow":
		t.Run("failing", func(t *testing.T) {
			setup(t)
			t.FailNow() // as a failed assertion would
		})
	case "wait":
		setup(t)
		time.Sleep(30 * time.Second) // the parent signals or kills us well before
		t.Error("not signalled")
	default:
		t.Fatalf("unknown %s=%q", helperEnv, mode)
	}
}

// child is a running helper process.
type child struct {
	cmd  *exec.Cmd
	name string // the cluster it made
	out  syncBuf
	done chan error
}

func startChild(t *testing.T, mode string) *child {
	t.Helper()
	vcluster.RequireCluster(t)
	tool := vcluster.BuildPodtool(t) // share one build
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperProcess$", "-test.v", "-test.count=1")
	cmd.Env = append(os.Environ(), helperEnv+"="+mode, vcluster.PodtoolEnv+"="+tool)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = cmd.Stdout
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	ch := &child{cmd: cmd, done: make(chan error, 1)}
	names := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			ch.out.WriteString(sc.Text() + "\n")
			if n, ok := strings.CutPrefix(sc.Text(), "VCLUSTER_NAME="); ok {
				names <- n
			}
		}
		close(names)
		ch.done <- cmd.Wait()
	}()
	t.Cleanup(func() {
		cmd.Process.Kill()
		if ch.name != "" {
			vcluster.Sweep(ch.name)
		}
	})
	select {
	case n, ok := <-names:
		if !ok {
			t.Fatalf("child exited without making a cluster: %v\n%s", <-ch.done, ch.out.String())
		}
		ch.name = n
	case <-time.After(30 * time.Second):
		t.Fatalf("child made no cluster in 30s:\n%s", ch.out.String())
	}
	return ch
}

// syncBuf is a strings.Builder safe for one writer and concurrent readers.
type syncBuf struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuf) WriteString(v string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.b.WriteString(v)
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func (ch *child) wait(t *testing.T) error {
	t.Helper()
	select {
	case err := <-ch.done:
		return err
	case <-time.After(20 * time.Second):
		t.Fatalf("child did not exit:\n%s", ch.out.String())
		return nil
	}
}

func TestCleanupAfterFailedTest(t *testing.T) {
	ch := startChild(t, "failnow")
	err := ch.wait(t)
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 1 || !strings.Contains(ch.out.String(), "--- FAIL: TestHelperProcess/failing") {
		t.Fatalf("child should have failed its test: %v\n%s", err, ch.out.String())
	}
	requireGone(t, ch.name)
}

func TestCleanupOnSignal(t *testing.T) {
	ch := startChild(t, "wait")
	if len(objects(t, ch.name)) == 0 {
		t.Fatal("child's cluster not found while it runs")
	}
	if err := ch.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	err := ch.wait(t)
	var ee *exec.ExitError
	if !errors.As(err, &ee) {
		t.Fatalf("child: %v\n%s", err, ch.out.String())
	}
	if ws := ee.Sys().(syscall.WaitStatus); !ws.Signaled() || ws.Signal() != syscall.SIGTERM {
		t.Errorf("child ended with %v, want death by SIGTERM re-raised after cleanup", ws)
	}
	requireGone(t, ch.name)
}

func TestSweepRemovesDeadRuns(t *testing.T) {
	// A live cluster of this process must survive every Sweep.
	mine := vcluster.NewForTest(t, vcluster.Config{})
	ch := startChild(t, "wait")
	if err := ch.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	ch.wait(t)
	left := objects(t, ch.name)
	if len(left) == 0 {
		t.Fatal("SIGKILLed child left nothing: this test proves nothing")
	}
	t.Logf("left by the killed run: %v", left)
	if err := vcluster.Sweep(""); err != nil {
		t.Fatal(err)
	}
	requireGone(t, ch.name)
	if len(objects(t, mine.Name())) == 0 {
		t.Fatal("Sweep removed a live cluster")
	}
	if _, err := mine.AddPod(context.Background(), vcluster.PodConfig{Name: "still-works", Node: "node-1"}); err != nil {
		t.Fatalf("live cluster after Sweep: %v", err)
	}
}
