package wireguard

import (
	"errors"
	"fmt"
	"runtime"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/conn"
)

// Sockets and TUN devices belong to the network namespace of the thread
// that creates them. Open pins the device to the namespace of its calling
// thread: the embedded device's UDP sockets are reopened later from
// whatever goroutine brings the device up, so when that namespace is not
// the process's, the bind enters it for every Open. (An agent runs in its
// node's namespace and never needs this; tests run two nodes in one
// process.)

// startNetns identifies the namespace the process started in. Package
// initialization runs on the main thread before anything can move it;
// every thread is in that namespace except while a goroutine locked to it
// has moved it. (/proc/self/ns/net is no such reference: it names the
// main thread's namespace, and the main thread may be the one moved.)
var startNetns, startNetnsErr = nsID("/proc/thread-self/ns/net")

type nsKey struct{ dev, ino uint64 }

func nsID(path string) (nsKey, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return nsKey{}, err
	}
	return nsKey{st.Dev, st.Ino}, nil
}

// threadNetns returns the calling thread's network namespace and whether
// it differs from the one the process's other threads are in.
func threadNetns() (netns.NsHandle, bool, error) {
	if startNetnsErr != nil {
		return netns.None(), false, fmt.Errorf("identify the process's network namespace: %w", startNetnsErr)
	}
	cur, err := netns.Get()
	if err != nil {
		return netns.None(), false, fmt.Errorf("open the thread's network namespace: %w", err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(int(cur), &st); err != nil {
		cur.Close()
		return netns.None(), false, fmt.Errorf("identify the thread's network namespace: %w", err)
	}
	return cur, (nsKey{st.Dev, st.Ino}) != startNetns, nil
}

// inNetns runs f on a thread in ns. A thread that cannot return to its
// namespace is never handed back to the scheduler: its goroutine exits
// locked, and the runtime ends the thread.
func inNetns(ns netns.NsHandle, f func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("open the thread's network namespace: %w", err)
			return
		}
		defer orig.Close()
		if err := netns.Set(ns); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("enter the device's network namespace: %w", err)
			return
		}
		ferr := f()
		if err := netns.Set(orig); err != nil {
			errc <- errors.Join(ferr, fmt.Errorf("leave the device's network namespace: %w", err))
			return // the thread stays locked and ends with the goroutine
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// nsBind opens its sockets in ns whichever goroutine asks.
type nsBind struct {
	conn.Bind
	ns netns.NsHandle
}

func (b nsBind) Open(port uint16) (fns []conn.ReceiveFunc, actual uint16, err error) {
	err = inNetns(b.ns, func() error {
		var oerr error
		fns, actual, oerr = b.Bind.Open(port)
		return oerr
	})
	return fns, actual, err
}
