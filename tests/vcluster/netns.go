package vcluster

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// netnsDir is where named network namespaces are bind-mounted, as
// `ip netns` does, so `ip netns exec NAME` works on a cluster's namespaces.
const netnsDir = "/run/netns"

func netnsPath(name string) string { return filepath.Join(netnsDir, name) }

// onThread runs f on a fresh OS thread locked for its duration. f reports
// whether it left the thread in a foreign namespace; such a thread is never
// handed back to the Go scheduler: the goroutine exits still locked, and the
// runtime ends the thread.
func onThread(f func() (tainted bool, err error)) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		tainted, err := f()
		if !tainted {
			runtime.UnlockOSThread()
		}
		errc <- err
	}()
	return <-errc
}

// inNetns runs f on a thread inside the named network namespace. Whatever f
// opens that is bound to the thread's namespace (sockets, /proc/sys/net
// files) belongs to that namespace.
func inNetns(name string, f func() error) error {
	return onThread(func() (bool, error) {
		target, err := netns.GetFromPath(netnsPath(name))
		if err != nil {
			return false, fmt.Errorf("open netns %s: %w", name, err)
		}
		defer target.Close()
		orig, err := netns.Get()
		if err != nil {
			return false, fmt.Errorf("open own netns: %w", err)
		}
		defer orig.Close()
		if err := netns.Set(target); err != nil {
			return false, fmt.Errorf("enter netns %s: %w", name, err)
		}
		ferr := f()
		if err := netns.Set(orig); err != nil {
			return true, errors.Join(ferr, fmt.Errorf("leave netns %s: %w", name, err))
		}
		return false, ferr
	})
}

// createNetns makes a named network namespace, like `ip netns add`.
func createNetns(name string) error {
	if _, err := os.Lstat(netnsPath(name)); err == nil {
		return fmt.Errorf("create netns %s: already exists", name)
	}
	return onThread(func() (bool, error) {
		orig, err := netns.Get()
		if err != nil {
			return false, fmt.Errorf("open own netns: %w", err)
		}
		defer orig.Close()
		// NewNamed unshares the calling thread into the new namespace and
		// bind-mounts it; the thread must come back.
		ns, err := netns.NewNamed(name)
		if err == nil {
			ns.Close()
		}
		if serr := netns.Set(orig); serr != nil {
			return true, errors.Join(err, fmt.Errorf("leave netns %s: %w", name, serr))
		}
		if err != nil {
			return false, fmt.Errorf("create netns %s: %w", name, err)
		}
		return false, nil
	})
}

// deleteNetns unmounts and removes a named namespace, like `ip netns del`;
// a file left unmounted by a failed create goes too. The kernel frees the
// namespace once no process or socket holds it.
func deleteNetns(name string) error {
	p := netnsPath(name)
	if _, err := os.Lstat(p); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err := unix.Unmount(p, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("delete netns %s: unmount: %w", name, err)
	}
	if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("delete netns %s: %w", name, err)
	}
	return nil
}

// listNetns returns the named namespaces whose names start with prefix.
func listNetns(prefix string) ([]string, error) {
	ents, err := os.ReadDir(netnsDir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []string
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), prefix) {
			out = append(out, e.Name())
		}
	}
	return out, nil
}

// handleAt opens a netlink handle in the named namespace. The handle's
// socket holds the namespace: close it.
func handleAt(name string) (*netlink.Handle, error) {
	ns, err := netns.GetFromPath(netnsPath(name))
	if err != nil {
		return nil, fmt.Errorf("open netns %s: %w", name, err)
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return nil, fmt.Errorf("netlink in netns %s: %w", name, err)
	}
	return h, nil
}

// sysctl is one /proc/sys/net setting; optional ones may be missing (a
// bridge sysctl without br_netfilter).
type sysctl struct {
	key, value string
	optional   bool
}

// setSysctls writes settings inside the named namespace: /proc/sys/net
// shows the namespace of the thread that opens the file.
func setSysctls(ns string, settings ...sysctl) error {
	return inNetns(ns, func() error {
		for _, s := range settings {
			p := filepath.Join("/proc/sys", strings.ReplaceAll(s.key, ".", "/"))
			err := os.WriteFile(p, []byte(s.value), 0o644)
			if s.optional && errors.Is(err, os.ErrNotExist) {
				continue
			}
			if err != nil {
				return fmt.Errorf("sysctl %s=%s in netns %s: %w", s.key, s.value, ns, err)
			}
		}
		return nil
	})
}
