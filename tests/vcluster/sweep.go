package vcluster

import (
	"errors"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// live holds the clusters of this process that are not closed yet, for the
// signal handler. It is process-wide because signals are.
var live = struct {
	sync.Mutex
	m map[*Cluster]struct{}
}{m: map[*Cluster]struct{}{}}

func register(c *Cluster) {
	live.Lock()
	defer live.Unlock()
	live.m[c] = struct{}{}
}

func unregister(c *Cluster) {
	live.Lock()
	defer live.Unlock()
	delete(live.m, c)
}

// CloseAll closes every cluster of this process that is still open.
func CloseAll() error {
	live.Lock()
	cs := make([]*Cluster, 0, len(live.m))
	for c := range live.m {
		cs = append(cs, c)
	}
	live.Unlock()
	var errs []error
	for _, c := range cs {
		errs = append(errs, c.Close())
	}
	return errors.Join(errs...)
}

var signalOnce sync.Once

// CleanupOnSignal makes SIGINT and SIGTERM close every open cluster of this
// process and then end it by the same signal. Calling it again does nothing.
// (A test binary killed by `go test -timeout` or SIGKILL cannot clean up:
// Sweep removes what it left.)
func CleanupOnSignal() {
	signalOnce.Do(func() {
		ch := make(chan os.Signal, 1)
		signal.Notify(ch, syscall.SIGINT, syscall.SIGTERM)
		go func() {
			sig := <-ch
			if err := CloseAll(); err != nil {
				fmt.Fprintf(os.Stderr, "vcluster: cleanup on %s: %v\n", sig, err)
			}
			signal.Reset(syscall.SIGINT, syscall.SIGTERM)
			syscall.Kill(os.Getpid(), sig.(syscall.Signal))
		}()
	})
}

// Sweep removes what dead runs left behind: for every cluster whose name
// starts with prefix ("" for all) and whose owning process is gone, its
// processes (by cgroup), namespaces, cgroups, bpffs pins and state; and
// podtool builds of dead processes. Clusters of live processes are never
// touched, so Sweep is safe while other runs are going.
func Sweep(prefix string) error {
	ents, err := os.ReadDir(StateDir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("sweep: %w", err)
	}
	var errs []error
	for _, e := range ents {
		name := e.Name()
		if !e.IsDir() || strings.HasPrefix(name, ".") {
			continue
		}
		dir := filepath.Join(StateDir, name)
		o, err := readOwner(dir)
		if err == nil && o.alive() {
			continue
		}
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("sweep %s: %w", name, err))
			continue
		}
		if strings.HasPrefix(name, podtoolDirPrefix) {
			if err := os.RemoveAll(dir); err != nil {
				errs = append(errs, fmt.Errorf("sweep %s: %w", name, err))
			}
			continue
		}
		if !strings.HasPrefix(name, prefix) {
			continue
		}
		if err := sweepCluster(name); err != nil {
			errs = append(errs, fmt.Errorf("sweep cluster %s: %w", name, err))
			continue
		}
		if err := os.RemoveAll(dir); err != nil {
			errs = append(errs, fmt.Errorf("sweep %s: %w", name, err))
		}
	}
	return errors.Join(errs...)
}

// sweepCluster removes one dead cluster's objects by their names.
func sweepCluster(name string) error {
	var errs []error
	var cgDir string
	if isFS(Cgroup2Mount, unix.CGROUP2_SUPER_MAGIC) {
		cgDir = clusterCgroup(Cgroup2Mount, name)
		if err := killCgroup(cgDir); err != nil {
			errs = append(errs, err)
		}
	}
	nss, err := listNetns(name + "_")
	if err != nil {
		errs = append(errs, err)
	}
	for _, ns := range nss {
		if err := deleteNetns(ns); err != nil {
			errs = append(errs, err)
		}
	}
	if cgDir != "" {
		if err := removeCgroupTree(cgDir); err != nil {
			errs = append(errs, err)
		}
	}
	if err := os.RemoveAll(clusterBPFFS(name)); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}
