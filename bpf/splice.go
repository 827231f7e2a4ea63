package bpf

//go:generate go run github.com/cilium/ebpf/cmd/bpf2go -cc clang -cflags "-O2 -g -Wall -Werror -I/usr/include/x86_64-linux-gnu" -target bpfel -type sock_key -type sock_state -type splice_counter -type splice_side -type splice_mode splice splice.c -- -I./include

// Socket splice: on one node, the bytes that a pod's socket and the node's
// L7 proxy exchange skip TCP/IP and the veth, and are put straight into the
// receiving socket's queue (sockhash + sk_msg redirect). The programs and
// the design (keys, the once-per-socket decision that keeps bytes in order,
// why pod-to-pod connections are left alone, what a socket in the map
// changes for the program reading it) are described at the top of
// splice.c.
//
// An agent opens the splice once per node, attaches the proxy's cgroup
// directory as the proxy and the directory holding the pods' directories
// (or single pods' directories) as pods:
//
//	s, err := bpf.OpenSplice("/sys/fs/bpf/nodemesh/node-1")
//	err = s.AttachProxy("/sys/fs/cgroup/system.slice/nodemesh-proxy.service")
//	err = s.AttachPods("/sys/fs/cgroup/kubepods.slice")
//
// Pins, all under <pinDir>/splice/:
//
//	splice_socks, splice_proxy_peers,      the maps
//	splice_state, splice_counters
//	links/msg                              the sk_msg program on splice_socks
//	links/pods-<id>, links/proxy-<id>      sock_ops on the cgroup with that id
//
// Close leaves them all in place, so sockets keep being spliced while the
// agent restarts; OpenSplice adopts them, switching each link to the newly
// loaded program (connections already spliced keep the program they were
// given, which uses the same maps). Remove takes everything away, but
// spliced connections stay spliced until they close: each socket holds its
// program, which holds the maps.

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/features"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/rlimit"
	"golang.org/x/sys/unix"
)

const (
	spliceDir      = "splice"
	spliceLinksDir = "links"
	spliceMsgLink  = "msg"
)

// SpliceSide says which end of a proxied connection a cgroup's sockets are.
type SpliceSide uint8

// Sides.
const (
	SpliceSidePod   SpliceSide = SpliceSide(spliceSpliceSideSPLICE_SIDE_POD)
	SpliceSideProxy SpliceSide = SpliceSide(spliceSpliceSideSPLICE_SIDE_PROXY)
)

func (s SpliceSide) String() string {
	switch s {
	case SpliceSidePod:
		return "pods"
	case SpliceSideProxy:
		return "proxy"
	}
	return "side(" + strconv.Itoa(int(s)) + ")"
}

// SpliceStats are the splice counters since the maps were created (they
// survive agent restarts).
type SpliceStats struct {
	// PodSockets and ProxySockets count established sockets put in the
	// map; InsertFailed those left out (map full, or their tuple held by
	// a live socket of another namespace): they stay on TCP.
	PodSockets, ProxySockets, InsertFailed uint64
	// SplicedSockets found their peer at their first message: everything
	// they send is redirected. TCPSockets did not (the peer was not in the
	// map yet, or is no proxy/pod peer, or bytes had gone through TCP
	// already): they use TCP for life.
	SplicedSockets, TCPSockets uint64
	// Messages and Bytes were redirected to a peer's receive queue.
	Messages, Bytes uint64
	// TCPMessages and TCPBytes were sent through TCP by sockets in the map.
	TCPMessages, TCPBytes uint64
	// PeerGone counts messages of spliced sockets whose peer had closed;
	// they went to TCP, which answers with a reset.
	PeerGone uint64
	// PodOther counts pod sockets whose connection is not with the proxy
	// (pod to pod, or outside the node): never in the map, untouched.
	PodOther uint64
}

// Splice is a node's socket splice: its maps, programs and cgroup
// attachments, pinned under <pinDir>/splice. Methods are safe for
// concurrent use.
type Splice struct {
	dir  string
	objs spliceObjs
	// mu serializes link changes.
	mu sync.Mutex
	// msgLegacy: the sk_msg program is attached to the map with
	// BPF_PROG_ATTACH (kernels before 6.10 have no sockmap links).
	msgLegacy bool
}

// spliceObjs are the programs and maps of splice.c, loaded (not its
// variables: see OpenSplice).
type spliceObjs struct {
	splicePrograms
	spliceMaps
}

func (o *spliceObjs) Close() error {
	return errors.Join(o.splicePrograms.Close(), o.spliceMaps.Close())
}

// OpenSplice loads the splice programs for the node whose pins live in
// pinDir (the node's bpffs directory, as Config.PinDir), creating
// <pinDir>/splice, or adopts what a previous process left there: pinned
// maps are reused with their contents and pinned links switched to the
// new programs. Calling it again on the same directory is harmless.
// A kernel without sockhash, sk_msg, sock_ops or socket storage gives a
// *MissingFeatureError.
func OpenSplice(pinDir string) (*Splice, error) {
	switch {
	case pinDir == "":
		return nil, errors.New("open splice: pin dir is required: a directory on a bpf filesystem")
	case !filepath.IsAbs(pinDir):
		return nil, fmt.Errorf("open splice: pin dir %q: must be an absolute path", pinDir)
	case filepath.Clean(pinDir) == "/":
		return nil, errors.New("open splice: pin dir must not be /")
	}
	if err := os.MkdirAll(pinDir, 0o700); err != nil {
		return nil, fmt.Errorf("open splice: %w", err)
	}
	if err := checkBPFFS(pinDir); err != nil {
		return nil, fmt.Errorf("open splice: %w", err)
	}
	dir := filepath.Join(pinDir, spliceDir)
	if err := os.MkdirAll(filepath.Join(dir, spliceLinksDir), 0o700); err != nil {
		return nil, fmt.Errorf("open splice: %w", err)
	}
	if err := rlimit.RemoveMemlock(); err != nil {
		return nil, fmt.Errorf("open splice: %w", err)
	}
	if err := spliceFeatures(); err != nil {
		return nil, fmt.Errorf("open splice: %w", err)
	}
	spec, err := loadSplice()
	if err != nil {
		return nil, fmt.Errorf("open splice: %w", err)
	}
	// The .bss holds unused pointers whose only job is to carry the enums
	// to bpf2go (splice.c): no map for them.
	delete(spec.Maps, ".bss")
	clear(spec.Variables)
	s := &Splice{dir: dir}
	err = spec.LoadAndAssign(&s.objs, &ebpf.CollectionOptions{Maps: ebpf.MapOptions{PinPath: dir}})
	if err != nil {
		var ve *ebpf.VerifierError
		if errors.As(err, &ve) {
			return nil, fmt.Errorf("open splice: the verifier refused the programs: %w\n%+v", err, ve)
		}
		if errors.Is(err, ebpf.ErrMapIncompatible) {
			return nil, fmt.Errorf("open splice: maps pinned in %s come from an incompatible version (remove them to start afresh; spliced connections keep working until they close): %w", dir, err)
		}
		return nil, fmt.Errorf("open splice: %w", err)
	}
	if err := s.attachMsg(); err != nil {
		s.objs.Close()
		return nil, fmt.Errorf("open splice: %w", err)
	}
	if err := s.adoptLinks(); err != nil {
		s.objs.Close()
		return nil, fmt.Errorf("open splice: %w", err)
	}
	return s, nil
}

// spliceFeatures reports the first kernel feature the splice lacks.
func spliceFeatures() error {
	for _, f := range []struct {
		feature, minimum string
		probe            func() error
	}{
		{"sockhash maps", "4.18", func() error { return features.HaveMapType(ebpf.SockHash) }},
		{"socket local storage", "5.2", func() error { return features.HaveMapType(ebpf.SkStorage) }},
		{"sock_ops programs", "4.13", func() error { return features.HaveProgramType(ebpf.SockOps) }},
		{"sk_msg programs", "4.17", func() error { return features.HaveProgramType(ebpf.SkMsg) }},
	} {
		if err := f.probe(); errors.Is(err, ebpf.ErrNotSupported) {
			return &MissingFeatureError{Feature: f.feature, Minimum: f.minimum, Err: err}
		} else if err != nil {
			return fmt.Errorf("probe %s: %w", f.feature, err)
		}
	}
	return nil
}

// attachMsg attaches the sk_msg program to the sockhash, or switches the
// pinned link to it. It must be attached before any socket enters the
// map: a socket takes the map's programs when it is inserted.
func (s *Splice) attachMsg() error {
	pin := filepath.Join(s.dir, spliceLinksDir, spliceMsgLink)
	if l, err := link.LoadPinnedLink(pin, nil); err == nil {
		defer l.Close()
		if err := l.Update(s.objs.SpliceMsg); err != nil {
			return fmt.Errorf("update sk_msg link %s: %w", pin, err)
		}
		return nil
	} else if !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("load sk_msg link %s: %w", pin, err)
	}
	l, err := link.AttachRawLink(link.RawLinkOptions{
		Target:  s.objs.SpliceSocks.FD(),
		Program: s.objs.SpliceMsg,
		Attach:  ebpf.AttachSkMsgVerdict,
	})
	if err != nil {
		// Sockmap links came in Linux 6.10; before, the map itself holds
		// the attachment (and a second attach replaces the program).
		if errors.Is(err, ebpf.ErrNotSupported) || errors.Is(err, unix.EINVAL) {
			if err := link.RawAttachProgram(link.RawAttachProgramOptions{
				Target:  s.objs.SpliceSocks.FD(),
				Program: s.objs.SpliceMsg,
				Attach:  ebpf.AttachSkMsgVerdict,
			}); err != nil {
				return fmt.Errorf("attach sk_msg to splice_socks: %w", err)
			}
			s.msgLegacy = true
			return nil
		}
		return fmt.Errorf("attach sk_msg to splice_socks: %w", err)
	}
	defer l.Close()
	if err := l.Pin(pin); err != nil {
		return fmt.Errorf("pin sk_msg link %s: %w", pin, err)
	}
	return nil
}

// linkPin is where the sock_ops link of side on cgroup id is pinned.
func (s *Splice) linkPin(side SpliceSide, id uint64) string {
	return filepath.Join(s.dir, spliceLinksDir, fmt.Sprintf("%s-%d", side, id))
}

// program is the sock_ops program of a side.
func (s *Splice) program(side SpliceSide) *ebpf.Program {
	if side == SpliceSideProxy {
		return s.objs.SpliceProxySockops
	}
	return s.objs.SplicePodSockops
}

// spliceCgroupID is the id of the cgroup v2 directory dir (its inode number).
func spliceCgroupID(dir string) (uint64, error) {
	var fs unix.Statfs_t
	if err := unix.Statfs(dir, &fs); err != nil {
		return 0, fmt.Errorf("statfs %s: %w", dir, err)
	}
	if fs.Type != unix.CGROUP2_SUPER_MAGIC {
		return 0, fmt.Errorf("%s is not a cgroup v2 directory (mount -t cgroup2 none <dir>)", dir)
	}
	var st unix.Stat_t
	if err := unix.Stat(dir, &st); err != nil {
		return 0, fmt.Errorf("stat %s: %w", dir, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFDIR {
		return 0, fmt.Errorf("%s is not a directory", dir)
	}
	return st.Ino, nil
}

// AttachPods splices the sockets of every process in cgroupDir and below
// as pod sockets: typically the node's directory holding one directory per
// pod. Attaching a directory again is harmless.
func (s *Splice) AttachPods(cgroupDir string) error { return s.attach(SpliceSidePod, cgroupDir) }

// AttachProxy splices the sockets of every process in cgroupDir and below
// as the proxy's. If the proxy's directory is inside an attached pods
// directory (or the reverse), the nearer attachment decides a socket's
// side.
func (s *Splice) AttachProxy(cgroupDir string) error { return s.attach(SpliceSideProxy, cgroupDir) }

func (s *Splice) attach(side SpliceSide, dir string) error {
	id, err := spliceCgroupID(dir)
	if err != nil {
		return fmt.Errorf("attach splice %s to %s: %w", side, dir, err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	other := SpliceSidePod
	if side == SpliceSidePod {
		other = SpliceSideProxy
	}
	if _, err := os.Stat(s.linkPin(other, id)); err == nil {
		return fmt.Errorf("attach splice %s to %s: the cgroup is attached as %s already (detach it first)", side, dir, other)
	}
	pin := s.linkPin(side, id)
	if l, err := link.LoadPinnedLink(pin, nil); err == nil {
		defer l.Close()
		if err := l.Update(s.program(side)); err != nil {
			return fmt.Errorf("attach splice %s to %s: update %s: %w", side, dir, pin, err)
		}
		return nil
	} else if !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("attach splice %s to %s: load %s: %w", side, dir, pin, err)
	}
	l, err := link.AttachCgroup(link.CgroupOptions{Path: dir, Attach: ebpf.AttachCGroupSockOps, Program: s.program(side)})
	if err != nil {
		return fmt.Errorf("attach splice %s to %s: %w", side, dir, err)
	}
	defer l.Close()
	if err := l.Pin(pin); err != nil {
		// Without bpf_link (before 5.7) the attachment cannot outlive
		// the process: refuse rather than half-work.
		return fmt.Errorf("attach splice %s to %s: pin: %w", side, dir, err)
	}
	return nil
}

// Detach stops splicing new sockets of cgroupDir (either side). Sockets
// already spliced stay so until they close.
func (s *Splice) Detach(cgroupDir string) error {
	id, err := spliceCgroupID(cgroupDir)
	if err != nil {
		return fmt.Errorf("detach splice from %s: %w", cgroupDir, err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	var errs []error
	for _, side := range []SpliceSide{SpliceSidePod, SpliceSideProxy} {
		if err := spliceUnpinLink(s.linkPin(side, id)); err != nil {
			errs = append(errs, fmt.Errorf("detach splice from %s: %w", cgroupDir, err))
		}
	}
	return errors.Join(errs...)
}

// spliceUnpinLink removes a pinned link, which detaches it; a missing pin is no
// error.
func spliceUnpinLink(pin string) error {
	l, err := link.LoadPinnedLink(pin, nil)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("load %s: %w", pin, err)
	}
	defer l.Close()
	if err := l.Unpin(); err != nil {
		return fmt.Errorf("unpin %s: %w", pin, err)
	}
	return nil
}

// cgroupLinks lists the pinned sock_ops links: pin path → side.
func (s *Splice) cgroupLinks() (map[string]SpliceSide, error) {
	ents, err := os.ReadDir(filepath.Join(s.dir, spliceLinksDir))
	if err != nil {
		return nil, err
	}
	out := map[string]SpliceSide{}
	for _, e := range ents {
		for _, side := range []SpliceSide{SpliceSidePod, SpliceSideProxy} {
			if strings.HasPrefix(e.Name(), side.String()+"-") {
				out[filepath.Join(s.dir, spliceLinksDir, e.Name())] = side
			}
		}
	}
	return out, nil
}

// adoptLinks switches every pinned sock_ops link to the new program.
func (s *Splice) adoptLinks() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	pins, err := s.cgroupLinks()
	if err != nil {
		return err
	}
	for pin, side := range pins {
		l, err := link.LoadPinnedLink(pin, nil)
		if err != nil {
			return fmt.Errorf("adopt %s: %w", pin, err)
		}
		err = l.Update(s.program(side))
		l.Close()
		if err != nil {
			return fmt.Errorf("adopt %s: %w", pin, err)
		}
	}
	return nil
}

// Stats sums the counters over the CPUs.
func (s *Splice) Stats() (SpliceStats, error) {
	var c [spliceSpliceCounterSPLICE_C_MAX]uint64
	for i := range c {
		var perCPU []uint64
		if err := s.objs.SpliceCounters.Lookup(uint32(i), &perCPU); err != nil {
			return SpliceStats{}, fmt.Errorf("splice stats: %w", err)
		}
		for _, v := range perCPU {
			c[i] += v
		}
	}
	return SpliceStats{
		PodSockets:     c[spliceSpliceCounterSPLICE_C_POD_SOCKETS],
		ProxySockets:   c[spliceSpliceCounterSPLICE_C_PROXY_SOCKETS],
		InsertFailed:   c[spliceSpliceCounterSPLICE_C_INSERT_FAILED],
		SplicedSockets: c[spliceSpliceCounterSPLICE_C_SPLICED],
		TCPSockets:     c[spliceSpliceCounterSPLICE_C_TCP],
		Messages:       c[spliceSpliceCounterSPLICE_C_MESSAGES],
		Bytes:          c[spliceSpliceCounterSPLICE_C_BYTES],
		TCPMessages:    c[spliceSpliceCounterSPLICE_C_TCP_MESSAGES],
		TCPBytes:       c[spliceSpliceCounterSPLICE_C_TCP_BYTES],
		PeerGone:       c[spliceSpliceCounterSPLICE_C_PEER_GONE],
		PodOther:       c[spliceSpliceCounterSPLICE_C_POD_OTHER],
	}, nil
}

// Close releases the process's handles. Pins and links stay: sockets of
// attached cgroups keep being spliced.
func (s *Splice) Close() error {
	return s.objs.Close()
}

// Remove detaches the programs from every cgroup and from the map, unpins
// the maps and removes <pinDir>/splice, then closes s. New sockets are no
// longer spliced; sockets already spliced stay so until they close (each
// holds the program, which holds the maps), so no byte is lost. For tests
// and uninstalling.
func (s *Splice) Remove() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	var errs []error
	pins, err := s.cgroupLinks()
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, fmt.Errorf("remove splice: %w", err))
	}
	for pin := range pins {
		if err := spliceUnpinLink(pin); err != nil {
			errs = append(errs, fmt.Errorf("remove splice: %w", err))
		}
	}
	if s.msgLegacy {
		if err := link.RawDetachProgram(link.RawDetachProgramOptions{
			Target:  s.objs.SpliceSocks.FD(),
			Program: s.objs.SpliceMsg,
			Attach:  ebpf.AttachSkMsgVerdict,
		}); err != nil {
			errs = append(errs, fmt.Errorf("remove splice: detach sk_msg: %w", err))
		}
	} else if err := spliceUnpinLink(filepath.Join(s.dir, spliceLinksDir, spliceMsgLink)); err != nil {
		errs = append(errs, fmt.Errorf("remove splice: %w", err))
	}
	for _, m := range []*ebpf.Map{s.objs.SpliceSocks, s.objs.SpliceState, s.objs.SpliceProxyPeers, s.objs.SpliceCounters} {
		if err := m.Unpin(); err != nil {
			errs = append(errs, fmt.Errorf("remove splice: unpin %s: %w", m, err))
		}
	}
	if err := os.Remove(filepath.Join(s.dir, spliceLinksDir)); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, fmt.Errorf("remove splice: %w", err))
	}
	if err := os.Remove(s.dir); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, fmt.Errorf("remove splice: %w", err))
	}
	errs = append(errs, s.objs.Close())
	return errors.Join(errs...)
}
