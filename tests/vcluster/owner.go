package vcluster

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// StateDir holds one directory per live cluster (and per podtool build),
// each with an "owner" file naming the process that made it. Sweep reads
// them to tell leftovers of dead runs from live ones.
const StateDir = "/run/nodemesh-vcluster"

// owner identifies a process across pid reuse: its pid and its start time in
// clock ticks since boot (field 22 of /proc/PID/stat).
type owner struct {
	pid   int
	start uint64
}

func self() (owner, error) {
	pid := os.Getpid()
	st, err := startTime(pid)
	return owner{pid, st}, err
}

func (o owner) String() string { return fmt.Sprintf("%d %d", o.pid, o.start) }

func parseOwner(s string) (owner, error) {
	f := strings.Fields(s)
	if len(f) != 2 {
		return owner{}, fmt.Errorf("owner %q: want \"PID STARTTIME\"", s)
	}
	pid, err1 := strconv.Atoi(f[0])
	st, err2 := strconv.ParseUint(f[1], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return owner{}, fmt.Errorf("owner %q: %w", s, err)
	}
	return owner{pid, st}, nil
}

// alive reports whether the owning process still runs.
func (o owner) alive() bool {
	st, err := startTime(o.pid)
	return err == nil && st == o.start
}

func startTime(pid int) (uint64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name may hold spaces and parentheses: fields count from
	// the last ')'.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, fmt.Errorf("/proc/%d/stat: no ')'", pid)
	}
	f := strings.Fields(s[i+1:])
	const startField = 22 - 3 // fields after ')' start at field 3
	if len(f) <= startField {
		return 0, fmt.Errorf("/proc/%d/stat: %d fields", pid, len(f)+2)
	}
	if f[0] == "Z" || f[0] == "X" {
		return 0, fmt.Errorf("process %d has exited", pid)
	}
	return strconv.ParseUint(f[startField], 10, 64)
}

// claimStateDir creates StateDir/name with its owner file, atomically: the
// directory appears (by rename) only with the owner in it, so a concurrent
// Sweep never sees an ownerless directory of a live run.
func claimStateDir(name string) (string, error) {
	me, err := self()
	if err != nil {
		return "", fmt.Errorf("own start time: %w", err)
	}
	if err := os.MkdirAll(StateDir, 0o755); err != nil {
		return "", fmt.Errorf("state dir: %w", err)
	}
	final := filepath.Join(StateDir, name)
	tmp, err := os.MkdirTemp(StateDir, ".new-"+name+"-")
	if err != nil {
		return "", fmt.Errorf("state dir: %w", err)
	}
	if err := os.WriteFile(filepath.Join(tmp, "owner"), []byte(me.String()+"\n"), 0o644); err != nil {
		os.RemoveAll(tmp)
		return "", fmt.Errorf("state dir owner: %w", err)
	}
	// RENAME_NOREPLACE: a name in use by another live run is an error, not a
	// takeover.
	if err := unix.Renameat2(unix.AT_FDCWD, tmp, unix.AT_FDCWD, final, unix.RENAME_NOREPLACE); err != nil {
		os.RemoveAll(tmp)
		if errors.Is(err, unix.EEXIST) {
			return "", fmt.Errorf("cluster name %q is in use (%s exists)", name, final)
		}
		return "", fmt.Errorf("state dir %s: %w", final, err)
	}
	return final, nil
}

func readOwner(dir string) (owner, error) {
	b, err := os.ReadFile(filepath.Join(dir, "owner"))
	if err != nil {
		return owner{}, err
	}
	return parseOwner(string(b))
}

// lockState serialises the one-time mounts between processes.
func lockState() (unlock func(), err error) {
	if err := os.MkdirAll(StateDir, 0o755); err != nil {
		return nil, fmt.Errorf("state dir: %w", err)
	}
	f, err := os.OpenFile(filepath.Join(StateDir, ".lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("state lock: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("state lock: %w", err)
	}
	return func() { f.Close() }, nil
}
