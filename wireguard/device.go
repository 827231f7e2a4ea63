package wireguard

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/ipc"
	"golang.zx2c4.com/wireguard/tun"
	"golang.zx2c4.com/wireguard/wgctrl"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// Kinds of device, as Status reports them.
const (
	KindKernel    = "kernel"
	KindUserspace = "userspace"
)

// ErrKernelUnsupported is returned (wrapped) by Open in ModeKernel when the
// kernel cannot create WireGuard links.
var ErrKernelUnsupported = errors.New("the kernel cannot create wireguard links (no wireguard module)")

// Device is a node's WireGuard device. Its methods may be called from any
// goroutine; configuration changes are serialized.
type Device struct {
	cfg   Config
	log   *slog.Logger
	kind  string
	index int // the link's ifindex
	// createdKernel: Open made the kernel link (a failed Open deletes it).
	createdKernel bool
	ns            netns.NsHandle
	nl            *netlink.Handle
	wg            *wgctrl.Client

	// userspace only
	dev  *device.Device
	uapi net.Listener

	mu       sync.Mutex // serializes configuration; guards the fields below
	names    map[wgtypes.Key]string
	families []int          // address families of the ip rules Open added
	fallback []netip.Prefix // SetFallback's blackholes
	closed   bool
}

// Open creates the WireGuard device named cfg.Interface in the network
// namespace of the calling thread, or adopts a kernel WireGuard link of
// that name that exists already (keeping its peers and sessions until
// SetPeers), gives it the node's key from cfg.KeyFile (created at first
// start), the listen port and the firewall mark through wgctrl, sets its
// MTU, brings it up and installs the ip rule that looks up
// cfg.RouteTable. A userspace device serves wgctrl and `wg` on
// /var/run/wireguard/<interface>.sock, so interface names must differ
// between devices that share /var/run, even in different namespaces.
func Open(cfg Config) (*Device, error) {
	cfg.Defaults()
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("wireguard: %w", err)
	}
	key, created, err := LoadOrCreateKey(cfg.KeyFile)
	if err != nil {
		return nil, err
	}
	log := cfg.Logger.With("interface", cfg.Interface)
	if created {
		log.Info("created the node's wireguard key", "file", cfg.KeyFile, "public_key", key.PublicKey().String())
	}
	ns, foreign, err := threadNetns()
	if err != nil {
		return nil, fmt.Errorf("wireguard %s: %w", cfg.Interface, err)
	}
	d := &Device{cfg: cfg, log: log, ns: ns, names: map[wgtypes.Key]string{}}
	ok := false
	defer func() {
		if !ok {
			_ = d.removeRules()
			if d.createdKernel {
				if l, err := d.nl.LinkByIndex(d.index); err == nil {
					_ = d.nl.LinkDel(l)
				}
			}
			d.release()
		}
	}()
	if d.nl, err = netlink.NewHandleAt(ns); err != nil {
		return nil, fmt.Errorf("wireguard %s: netlink: %w", cfg.Interface, err)
	}
	if err := d.createOrAdopt(foreign); err != nil {
		return nil, err
	}
	// wgctrl opens its generic netlink socket (kernel devices) here, on
	// the calling thread, so in the device's namespace.
	if d.wg, err = wgctrl.New(); err != nil {
		return nil, fmt.Errorf("wireguard %s: wgctrl: %w", cfg.Interface, err)
	}
	k := key.k
	mark := cfg.FirewallMark
	if err := d.wg.ConfigureDevice(cfg.Interface, wgtypes.Config{PrivateKey: &k, ListenPort: &cfg.ListenPort, FirewallMark: &mark}); err != nil {
		return nil, fmt.Errorf("wireguard %s: set key, listen port %d and mark: %w (is the port taken? choose another --wireguard-listen-port)", cfg.Interface, cfg.ListenPort, err)
	}
	link, err := d.nl.LinkByIndex(d.index)
	if err != nil {
		return nil, fmt.Errorf("wireguard %s: %w", cfg.Interface, err)
	}
	if err := d.nl.LinkSetMTU(link, cfg.MTU); err != nil {
		return nil, fmt.Errorf("wireguard %s: set mtu %d: %w", cfg.Interface, cfg.MTU, err)
	}
	if err := d.nl.LinkSetUp(link); err != nil {
		return nil, fmt.Errorf("wireguard %s: set up: %w", cfg.Interface, err)
	}
	if err := d.addRules(); err != nil {
		return nil, err
	}
	if d.dev != nil {
		// The device would come up on the TUN's up event, later; up now
		// so Open returns a device that receives.
		if err := d.dev.Up(); err != nil {
			return nil, fmt.Errorf("wireguard %s: bring the device up (is UDP port %d taken? choose another --wireguard-listen-port): %w", cfg.Interface, cfg.ListenPort, err)
		}
	}
	ok = true
	log.Info("wireguard device ready", "kind", d.kind, "public_key", key.PublicKey().String(), "listen_port", cfg.ListenPort, "mtu", cfg.MTU)
	return d, nil
}

func (d *Device) createOrAdopt(foreign bool) error {
	name := d.cfg.Interface
	link, err := d.nl.LinkByName(name)
	if err == nil {
		switch link.Type() {
		case "wireguard":
			if d.cfg.Mode == ModeUserspace {
				return fmt.Errorf("wireguard %s: a kernel wireguard link of that name exists; delete it (ip link del %s) or use --wireguard-mode=auto", name, name)
			}
			d.kind, d.index = KindKernel, link.Attrs().Index
			d.log.Info("adopting the existing kernel wireguard link")
			return nil
		case "tun", "tuntap":
			return fmt.Errorf("wireguard %s: a TUN device of that name exists, held by another process (another agent or wireguard-go?); stop it or choose another --wireguard-interface", name)
		default:
			return fmt.Errorf("wireguard %s: a %s link of that name exists; choose another --wireguard-interface", name, link.Type())
		}
	}
	var notFound netlink.LinkNotFoundError
	if !errors.As(err, &notFound) {
		return fmt.Errorf("wireguard %s: %w", name, err)
	}
	if d.cfg.Mode != ModeUserspace {
		err := d.nl.LinkAdd(&netlink.Wireguard{LinkAttrs: netlink.LinkAttrs{Name: name, MTU: d.cfg.MTU}})
		switch {
		case err == nil:
			link, err := d.nl.LinkByName(name)
			if err != nil {
				return fmt.Errorf("wireguard %s: %w", name, err)
			}
			d.kind, d.index, d.createdKernel = KindKernel, link.Attrs().Index, true
			return nil
		case errors.Is(err, unix.EOPNOTSUPP):
			if d.cfg.Mode == ModeKernel {
				return fmt.Errorf("wireguard %s: %w; load it (modprobe wireguard) or use --wireguard-mode=auto or userspace", name, ErrKernelUnsupported)
			}
			d.log.Info("no wireguard kernel module: using the embedded userspace device")
		default:
			return fmt.Errorf("wireguard %s: create kernel link: %w", name, err)
		}
	}
	return d.createUserspace(foreign)
}

func (d *Device) createUserspace(foreign bool) error {
	name := d.cfg.Interface
	t, err := tun.CreateTUN(name, d.cfg.MTU)
	if err != nil {
		return fmt.Errorf("wireguard %s: create TUN device: %w (does /dev/net/tun exist? modprobe tun)", name, err)
	}
	link, err := d.nl.LinkByName(name)
	if err != nil {
		t.Close()
		return fmt.Errorf("wireguard %s: %w", name, err)
	}
	d.kind, d.index = KindUserspace, link.Attrs().Index
	var bind conn.Bind = conn.NewDefaultBind()
	if foreign {
		t = nsTUN{Device: t, d: d}
		bind = nsBind{Bind: bind, ns: d.ns}
	}
	log := d.log.With("kind", KindUserspace)
	d.dev = device.NewDevice(t, bind, &device.Logger{
		Verbosef: func(format string, args ...any) { log.Debug(fmt.Sprintf(format, args...)) },
		Errorf:   func(format string, args ...any) { log.Warn(fmt.Sprintf(format, args...)) },
	})
	f, err := ipc.UAPIOpen(name)
	if err != nil {
		return fmt.Errorf("wireguard %s: open the configuration socket /var/run/wireguard/%s.sock: %w (a live device of the same name, perhaps in another network namespace, serves it: names must differ between devices sharing /var/run)", name, name, err)
	}
	d.uapi, err = ipc.UAPIListen(name, f)
	f.Close()
	if err != nil {
		return fmt.Errorf("wireguard %s: listen on the configuration socket: %w", name, err)
	}
	go func(l net.Listener, dev *device.Device) {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go dev.IpcHandle(c)
		}
	}(d.uapi, d.dev)
	return nil
}

// nsTUN answers MTU through the device's netlink handle: the TUN's own
// lookup goes by name on the calling thread's namespace.
type nsTUN struct {
	tun.Device
	d *Device
}

func (t nsTUN) MTU() (int, error) {
	l, err := t.d.nl.LinkByIndex(t.d.index)
	if err != nil {
		return 0, err
	}
	return l.Attrs().MTU, nil
}

// Kind is KindKernel or KindUserspace.
func (d *Device) Kind() string { return d.kind }

// Interface is the device's link name.
func (d *Device) Interface() string { return d.cfg.Interface }

// SetPrivateKey makes k the device's key. Both implementations expire the
// current sessions of every peer at once (wireguard-go's
// Device.SetPrivateKey and the kernel's set_device both call
// ExpireCurrentKeypairs): the next packet to a peer starts a handshake
// with the new key, which succeeds only once the peer has this node's new
// public key; until then packets to it are dropped (TCP retransmits them).
// Store the key first (StoreKey) so a restart keeps it.
func (d *Device) SetPrivateKey(k PrivateKey) error {
	if k.IsZero() {
		return fmt.Errorf("wireguard %s: set private key: the key is empty", d.cfg.Interface)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return fmt.Errorf("wireguard %s: the device is closed", d.cfg.Interface)
	}
	kk := k.k
	if err := d.wg.ConfigureDevice(d.cfg.Interface, wgtypes.Config{PrivateKey: &kk}); err != nil {
		return fmt.Errorf("wireguard %s: set private key: %w", d.cfg.Interface, err)
	}
	d.log.Info("wireguard key replaced", "public_key", k.PublicKey().String())
	return nil
}

// Close releases the device. A userspace device stops and its link, with
// the routes through it, goes away; its ip rules are removed. A kernel
// device stays, configured and forwarding, for the next Open to adopt.
func (d *Device) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil
	}
	d.closed = true
	var errs []error
	if d.kind == KindUserspace {
		errs = append(errs, d.removeRules())
	}
	d.release()
	return errors.Join(errs...)
}

// release closes whatever Open set up; a kernel link is left in place.
func (d *Device) release() {
	if d.uapi != nil {
		d.uapi.Close()
	}
	if d.dev != nil {
		d.dev.Close() // closes the TUN: the kernel removes the link
	}
	if d.wg != nil {
		d.wg.Close()
	}
	if d.nl != nil {
		d.nl.Close()
	}
	d.ns.Close()
}
