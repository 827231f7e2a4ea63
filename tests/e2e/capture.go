package e2e

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// Capture is a tcpdump of the underlay switch (every port of its bridge:
// a bridge interface itself sees only what is addressed to it): every packet between the
// nodes, as a network tap between the machines would see it.
type Capture struct {
	cmd   *exec.Cmd
	file  string
	done  chan error
	lines []string // tcpdump's standard error
}

// CaptureUnderlay starts capturing the underlay's TCP traffic into a pcap
// file in the harness's directory, and returns once tcpdump listens.
func (h *Harness) CaptureUnderlay(ctx context.Context) (*Capture, error) {
	return h.CaptureUnderlayFilter(ctx, "tcp")
}

// CaptureUnderlayFilter is CaptureUnderlay with a tcpdump filter
// expression ("" for every packet).
func (h *Harness) CaptureUnderlayFilter(ctx context.Context, filter string) (*Capture, error) {
	file := filepath.Join(h.Dir, fmt.Sprintf("underlay-%d.pcap", time.Now().UnixNano()))
	args := []string{"netns", "exec", h.C.SwitchNetns(), "tcpdump", "-i", "any", "--immediate-mode", "-U", "-s", "0", "-w", file}
	if filter != "" {
		args = append(args, filter)
	}
	cmd := exec.Command("ip", args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("tcpdump: %w", err)
	}
	c := &Capture{cmd: cmd, file: file, done: make(chan error, 1)}
	listening := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			c.lines = append(c.lines, sc.Text())
			if strings.Contains(sc.Text(), "listening on") {
				close(listening)
			}
		}
		c.done <- cmd.Wait()
	}()
	select {
	case <-listening:
		return c, nil
	case err := <-c.done:
		return nil, fmt.Errorf("tcpdump exited: %v: %s", err, strings.Join(c.lines, "\n"))
	case <-time.After(10 * time.Second):
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		return nil, fmt.Errorf("tcpdump: not listening after 10s")
	case <-ctx.Done():
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		return nil, ctx.Err()
	}
}

// Stop ends the capture and returns the pcap file's bytes (headers and
// packets: payload bytes appear in it verbatim).
func (c *Capture) Stop() ([]byte, error) {
	time.Sleep(100 * time.Millisecond) // let the last packets reach the file
	syscall.Kill(-c.cmd.Process.Pid, syscall.SIGINT)
	select {
	case <-c.done:
	case <-time.After(5 * time.Second):
		syscall.Kill(-c.cmd.Process.Pid, syscall.SIGKILL)
		<-c.done
	}
	b, err := os.ReadFile(c.file)
	os.Remove(c.file)
	return b, err
}

// Log is what tcpdump said (how many packets it captured, dropped).
func (c *Capture) Log() string { return strings.Join(c.lines, "\n") }
