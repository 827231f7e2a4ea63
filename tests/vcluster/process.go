package vcluster

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Process is a program started in a node or pod. It runs in its own process
// group, gets SIGKILL if the test process dies (Pdeathsig), is killed when
// the context given to Start ends, and is stopped by Close.
type Process struct {
	Args []string

	cmd            *exec.Cmd
	stdout, stderr outBuf
	done           chan struct{}
	err            error // set before done closes
}

// runSpec says where a program runs.
type runSpec struct {
	netns  string   // named network namespace
	cgroup string   // cgroup v2 directory; "" keeps the caller's
	env    []string // added to the caller's environment
}

func startProcess(ctx context.Context, spec runSpec, args []string) (*Process, error) {
	if len(args) == 0 {
		return nil, errors.New("no program given")
	}
	p := &Process{Args: args, done: make(chan struct{})}
	p.stdout.init()
	p.stderr.init()
	cmd := exec.CommandContext(ctx, args[0], args[1:]...)
	cmd.Env = append(os.Environ(), spec.env...)
	cmd.Stdout, cmd.Stderr = &p.stdout, &p.stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 2 * time.Second
	if spec.cgroup != "" {
		// clone3(CLONE_INTO_CGROUP): the child is in the cgroup from its
		// first instruction, so no socket it opens escapes a sockops program.
		fd, err := unix.Open(spec.cgroup, unix.O_DIRECTORY|unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			return nil, fmt.Errorf("open cgroup %s: %w", spec.cgroup, err)
		}
		defer unix.Close(fd)
		cmd.SysProcAttr.UseCgroupFD, cmd.SysProcAttr.CgroupFD = true, fd
	}
	p.cmd = cmd
	// The child inherits the network namespace of the thread that forks it.
	if err := inNetns(spec.netns, cmd.Start); err != nil {
		return nil, fmt.Errorf("start %s in %s: %w", args[0], spec.netns, err)
	}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

// Pid is the process id (and process group id).
func (p *Process) Pid() int { return p.cmd.Process.Pid }

// Done is closed when the process has exited and been reaped.
func (p *Process) Done() <-chan struct{} { return p.done }

// Wait waits for the process to exit and returns its exit error.
func (p *Process) Wait() error {
	<-p.done
	return p.err
}

// Stdout is what the process printed so far.
func (p *Process) Stdout() string { return string(p.stdout.bytes()) }

// Stderr is what the process printed to stderr so far.
func (p *Process) Stderr() string { return string(p.stderr.bytes()) }

// WaitForLine waits until the process prints line (a whole stdout line). It
// fails when the process exits first or ctx ends.
func (p *Process) WaitForLine(ctx context.Context, line string) error {
	for {
		out, changed := p.stdout.snapshot()
		for l := range strings.SplitSeq(string(out), "\n") {
			if l == line {
				return nil
			}
		}
		select {
		case <-changed:
		case <-p.done:
			if out, _ := p.stdout.snapshot(); bytes.Contains(append([]byte("\n"), out...), []byte("\n"+line+"\n")) {
				return nil
			}
			return fmt.Errorf("%s exited before printing %q: %v: %s", p.Args[0], line, p.err, strings.TrimSpace(p.Stderr()))
		case <-ctx.Done():
			return fmt.Errorf("%s: waiting for %q: %w (stderr: %s)", p.Args[0], line, ctx.Err(), strings.TrimSpace(p.Stderr()))
		}
	}
}

// WaitReady waits for the line "ready", which nodemesh-podtool serve prints
// once it listens.
func (p *Process) WaitReady(ctx context.Context) error { return p.WaitForLine(ctx, "ready") }

// Stop sends SIGTERM to the process group, SIGKILL after grace, and waits.
// It returns nil when the process ended by either signal or exited 0.
func (p *Process) Stop(grace time.Duration) error {
	select {
	case <-p.done:
	default:
		syscall.Kill(-p.Pid(), syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(grace):
			syscall.Kill(-p.Pid(), syscall.SIGKILL)
			<-p.done
		}
	}
	var ee *exec.ExitError
	if errors.As(p.err, &ee) {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			return nil
		}
	}
	return p.err
}

// kill ends the process group at once and waits.
func (p *Process) kill() {
	select {
	case <-p.done:
	default:
		syscall.Kill(-p.Pid(), syscall.SIGKILL)
		<-p.done
	}
}

// outBuf collects output and wakes waiters on every write.
type outBuf struct {
	mu      sync.Mutex
	buf     bytes.Buffer
	changed chan struct{}
}

func (b *outBuf) init() { b.changed = make(chan struct{}) }

func (b *outBuf) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	n, err := b.buf.Write(p)
	close(b.changed)
	b.changed = make(chan struct{})
	return n, err
}

func (b *outBuf) snapshot() ([]byte, <-chan struct{}) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return bytes.Clone(b.buf.Bytes()), b.changed
}

func (b *outBuf) bytes() []byte {
	out, _ := b.snapshot()
	return out
}
