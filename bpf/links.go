package bpf

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// linksDir holds one directory per interface under the pin dir, with the
// pinned tcx links of the two programs: tcx/<ifname>/from_pod, .../to_pod.
const linksDir = "tcx"

// hook is one of the two attachments on a host-side veth.
type hook struct {
	name   string // pin name, the program's name
	attach ebpf.AttachType
}

// The programs' hooks: from_pod sees what the pod sends (the host veth's
// ingress), to_pod what is sent to it (the host veth's egress); to_proxy
// runs on the hairpin's ingress (AttachHairpin).
var hooks = [3]hook{{"from_pod", ebpf.AttachTCXIngress}, {"to_pod", ebpf.AttachTCXEgress}, {"to_proxy", ebpf.AttachTCXIngress}}

// podHooks are a pod veth's, hairpinHooks the hairpin's; an empty directory
// named hairpinMarker in an interface's directory says which (tc filters
// leave no pins to tell, and bpffs holds no regular files).
const hairpinMarker = "hairpin"

// podHooks are a pod veth's, hairpinHooks the hairpin's.
var podHooks, hairpinHooks = hooks[:2], hooks[2:]

func (d *Datapath) program(h hook) *ebpf.Program {
	switch h.name {
	case "from_pod":
		return d.objs.FromPod
	case "to_pod":
		return d.objs.ToPod
	}
	return d.objs.ToProxy
}

func (d *Datapath) linkPin(ifname string, h hook) string {
	return filepath.Join(d.cfg.PinDir, linksDir, ifname, h.name)
}

// Attach attaches both programs to the host side of a pod's veth, as pinned
// tcx links placed first on their hooks. It is idempotent: a link already
// pinned for this interface is kept (and switched to this process's program
// if it runs another); one pinned for a vanished interface of the same name
// is replaced.
func (d *Datapath) Attach(ifname string) error {
	return d.attach(ifname, podHooks)
}

// AttachHairpin attaches to_proxy to the ingress of the hairpin's far end
// (package redirect's nm_net), like Attach. Pair it with SetHairpin.
func (d *Datapath) AttachHairpin(ifname string) error {
	return d.attach(ifname, hairpinHooks)
}

func (d *Datapath) attach(ifname string, hs []hook) error {
	iface, err := net.InterfaceByName(ifname)
	if err != nil {
		return fmt.Errorf("attach %s: %w", ifname, err)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := os.MkdirAll(filepath.Join(d.cfg.PinDir, linksDir, ifname), 0o700); err != nil {
		return fmt.Errorf("attach %s: %w", ifname, err)
	}
	if hs[0].name == hairpinHooks[0].name {
		if err := os.MkdirAll(filepath.Join(d.cfg.PinDir, linksDir, ifname, hairpinMarker), 0o700); err != nil {
			return fmt.Errorf("attach %s: %w", ifname, err)
		}
	}
	if d.tc || d.cfg.Hook == HookTC {
		return d.attachTC(ifname, iface.Index, hs)
	}
	err = d.attachTCX(ifname, iface.Index, hs)
	var missing *MissingFeatureError
	if errors.As(err, &missing) && d.cfg.Hook == HookAuto {
		d.tc = true // no tcx on this kernel: tc clsact filters from now on
		return d.attachTC(ifname, iface.Index, hs)
	}
	return err
}

// attachTCX attaches the programs of hs as pinned tcx links.
func (d *Datapath) attachTCX(ifname string, ifindex int, hs []hook) error {
	var created []link.Link
	for _, h := range hs {
		l, err := d.attachOne(ifname, ifindex, h)
		if err != nil {
			for _, c := range created { // both or neither
				_ = c.Unpin()
				_ = c.Close()
			}
			return fmt.Errorf("attach %s %s: %w", h.name, ifname, err)
		}
		if l != nil {
			created = append(created, l)
		}
	}
	for _, c := range created {
		_ = c.Close() // the pin holds the link
	}
	return nil
}

// attachOne makes sure a pinned link attaches h's program to ifindex; it
// returns the link if it created one.
func (d *Datapath) attachOne(ifname string, ifindex int, h hook) (link.Link, error) {
	pin := d.linkPin(ifname, h)
	prog := d.program(h)
	if l, err := link.LoadPinnedLink(pin, nil); err == nil {
		info, err := l.Info()
		if err == nil && info.TCX() != nil && int(info.TCX().Ifindex) == ifindex {
			defer l.Close()
			return nil, d.updateIfNeeded(l, info, prog)
		}
		// The interface this link was made for is gone (a new veth has
		// its name): the stale link goes.
		_ = l.Unpin()
		_ = l.Close()
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("load pinned link %s: %w", pin, err)
	}
	l, err := link.AttachTCX(link.TCXOptions{Interface: ifindex, Program: prog, Attach: h.attach, Anchor: link.Head()})
	if err != nil {
		if errors.Is(err, ebpf.ErrNotSupported) {
			return nil, &MissingFeatureError{Feature: "tcx links", Minimum: "6.6", Err: err}
		}
		return nil, err
	}
	if err := l.Pin(pin); err != nil {
		_ = l.Close()
		return nil, fmt.Errorf("pin link: %w", err)
	}
	return l, nil
}

// updateIfNeeded switches a link to prog unless it already runs the same
// code on the same maps. link.Update is atomic: packets see the old program
// or the new one, never no program.
func (d *Datapath) updateIfNeeded(l link.Link, info *link.Info, prog *ebpf.Program) error {
	cur, err := ebpf.NewProgramFromID(info.Program)
	if err == nil {
		same, err := sameProgram(cur, prog)
		cur.Close()
		if err == nil && same {
			return nil
		}
	}
	if err := l.Update(prog); err != nil {
		return fmt.Errorf("update link to the new program: %w", err)
	}
	return nil
}

// sameProgram compares two loaded programs by tag (a hash of the
// instructions with map references blanked) and the maps they use.
func sameProgram(a, b *ebpf.Program) (bool, error) {
	ai, err := a.Info()
	if err != nil {
		return false, err
	}
	bi, err := b.Info()
	if err != nil {
		return false, err
	}
	am, ok1 := ai.MapIDs()
	bm, ok2 := bi.MapIDs()
	if !ok1 || !ok2 {
		return false, errors.New("map IDs of programs unavailable")
	}
	slices.Sort(am)
	slices.Sort(bm)
	return ai.Tag == bi.Tag && ai.Type == bi.Type && slices.Equal(am, bm), nil
}

// attachTC attaches both programs as tc filters (direct action) on the
// interface's clsact qdisc, for kernels without tcx. A filter holds its
// program like a pinned link does, so enforcement outlives the process;
// replacing the filter switches programs atomically. The interface's
// directory under tcx/ (empty) records the attachment.
func (d *Datapath) attachTC(ifname string, ifindex int, hs []hook) error {
	qdisc := &netlink.GenericQdisc{QdiscType: "clsact", QdiscAttrs: netlink.QdiscAttrs{
		LinkIndex: ifindex, Handle: netlink.MakeHandle(0xffff, 0), Parent: netlink.HANDLE_CLSACT}}
	if err := netlink.QdiscReplace(qdisc); err != nil {
		return fmt.Errorf("attach %s: clsact qdisc: %w", ifname, err)
	}
	for _, h := range hs {
		if err := netlink.FilterReplace(tcFilter(ifindex, h, d.program(h))); err != nil {
			return fmt.Errorf("attach %s %s: tc filter: %w", h.name, ifname, err)
		}
	}
	return nil
}

func tcFilter(ifindex int, h hook, prog *ebpf.Program) *netlink.BpfFilter {
	parent := uint32(netlink.HANDLE_MIN_INGRESS)
	if h.attach == ebpf.AttachTCXEgress {
		parent = netlink.HANDLE_MIN_EGRESS
	}
	f := &netlink.BpfFilter{
		FilterAttrs: netlink.FilterAttrs{LinkIndex: ifindex, Parent: parent, Handle: netlink.MakeHandle(0, 1),
			Protocol: unix.ETH_P_ALL, Priority: 1},
		Name: "nodemesh_" + h.name, DirectAction: true,
	}
	if prog != nil {
		f.Fd = prog.FD()
	}
	return f
}

// detachTC removes the programs' tc filters from an interface, if any.
func detachTC(ifname string) error {
	iface, err := net.InterfaceByName(ifname)
	if err != nil {
		return nil // gone, and its filters with it
	}
	var errs []error
	for _, h := range hooks {
		if err := netlink.FilterDel(tcFilter(iface.Index, h, nil)); err != nil && !errors.Is(err, unix.ENOENT) && !errors.Is(err, unix.EINVAL) {
			errs = append(errs, fmt.Errorf("detach %s %s: tc filter: %w", h.name, ifname, err))
		}
	}
	return errors.Join(errs...)
}

// Detach detaches both programs from an interface and unpins their links.
// Detaching an interface that is not attached is not an error.
func (d *Datapath) Detach(ifname string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	var errs []error
	if d.tc || d.cfg.Hook == HookTC {
		errs = append(errs, detachTC(ifname))
	}
	for _, h := range hooks {
		pin := d.linkPin(ifname, h)
		l, err := link.LoadPinnedLink(pin, nil)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("detach %s %s: %w", h.name, ifname, err))
			continue
		}
		// Detach explicitly: another process may hold the link open.
		if err := l.Detach(); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("detach %s %s: %w", h.name, ifname, err))
		}
		if err := l.Unpin(); err != nil {
			errs = append(errs, fmt.Errorf("detach %s %s: unpin: %w", h.name, ifname, err))
		}
		_ = l.Close()
	}
	if err := os.RemoveAll(filepath.Join(d.cfg.PinDir, linksDir, ifname)); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, fmt.Errorf("detach %s: %w", ifname, err))
	}
	return errors.Join(errs...)
}

// Attached lists the interfaces with pinned links, sorted.
func (d *Datapath) Attached() ([]string, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.attachedInterfaces()
}

func (d *Datapath) attachedInterfaces() ([]string, error) {
	ents, err := os.ReadDir(filepath.Join(d.cfg.PinDir, linksDir))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list links: %w", err)
	}
	var out []string
	for _, e := range ents {
		if e.IsDir() {
			out = append(out, e.Name())
		}
	}
	return out, nil
}

// adoptLinks switches every link a previous process pinned to this
// process's programs (when they differ). Links whose interface is gone are
// left for Attach or Detach to clean up.
func (d *Datapath) adoptLinks() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	ifaces, err := d.attachedInterfaces()
	if err != nil {
		return err
	}
	for _, name := range ifaces {
		pinned := 0
		for _, h := range hooks {
			l, err := link.LoadPinnedLink(d.linkPin(name, h), nil)
			if errors.Is(err, os.ErrNotExist) {
				continue
			}
			pinned++
			if err != nil {
				return fmt.Errorf("adopt link %s %s: %w", h.name, name, err)
			}
			info, err := l.Info()
			if err == nil && info.TCX() != nil && info.TCX().Ifindex != 0 {
				err = d.updateIfNeeded(l, info, d.program(h))
			}
			l.Close()
			if err != nil {
				return fmt.Errorf("adopt link %s %s: %w", h.name, name, err)
			}
		}
		if pinned > 0 || d.cfg.Hook == HookTCX {
			continue
		}
		// Attached with tc filters by a previous process: switch them to
		// this process's programs (if the interface is in this namespace;
		// otherwise Attach does it).
		d.tc = true
		hs := podHooks
		if _, err := os.Stat(filepath.Join(d.cfg.PinDir, linksDir, name, hairpinMarker)); err == nil {
			hs = hairpinHooks
		}
		if iface, err := net.InterfaceByName(name); err == nil {
			if err := d.attachTC(name, iface.Index, hs); err != nil {
				return fmt.Errorf("adopt tc filters of %s: %w", name, err)
			}
		}
	}
	return nil
}
