package bpf

//go:generate go run github.com/cilium/ebpf/cmd/bpf2go -cc clang -cflags "-O2 -g -Wall -Werror -I/usr/include/x86_64-linux-gnu" -target bpfel -type flow_event -type endpoint_key -type policy_key -type policy_entry -type ct_key -type ct_entry -type frag_key -type nm_config datapath datapath.c -- -I./include

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/rlimit"
	"golang.org/x/sys/unix"
)

// DefaultPinDir is where Defaults puts a node's pins when the caller names
// none; agents pass /sys/fs/bpf/nodemesh/<node>.
const DefaultPinDir = "/sys/fs/bpf/nodemesh/default"

// Config configures a node's datapath.
type Config struct {
	// PinDir is the bpffs directory holding this node's maps and links
	// (maps by name, links under tcx/<interface>/). One directory per node.
	PinDir string
	// Hook says how programs attach to interfaces: HookAuto (tcx links,
	// or tc clsact filters on kernels without tcx), HookTCX or HookTC.
	Hook string
}

// Hook modes.
const (
	HookAuto = ""
	HookTCX  = "tcx"
	HookTC   = "tc"
)

// Defaults fills unset fields.
func (c *Config) Defaults() {
	if c.PinDir == "" {
		c.PinDir = DefaultPinDir
	}
}

// Validate reports every problem with the configuration.
func (c *Config) Validate() error {
	var errs []error
	switch {
	case c.PinDir == "":
		errs = append(errs, errors.New("pin dir is required: a directory on a bpf filesystem (mount -t bpf bpf /sys/fs/bpf)"))
	case !filepath.IsAbs(c.PinDir):
		errs = append(errs, fmt.Errorf("pin dir %q: must be an absolute path", c.PinDir))
	case filepath.Clean(c.PinDir) == "/":
		errs = append(errs, errors.New("pin dir must not be /"))
	}
	switch c.Hook {
	case HookAuto, HookTCX, HookTC:
	default:
		errs = append(errs, fmt.Errorf("hook %q: use tcx, tc or leave it empty (tcx where the kernel has it, tc otherwise)", c.Hook))
	}
	return errors.Join(errs...)
}

// MissingFeatureError says the kernel lacks something the datapath needs.
type MissingFeatureError struct {
	Feature string // what is missing, e.g. "tcx links"
	Minimum string // the first kernel version that has it
	Err     error
}

func (e *MissingFeatureError) Error() string {
	return fmt.Sprintf("kernel lacks %s (Linux %s or later): %v", e.Feature, e.Minimum, e.Err)
}

func (e *MissingFeatureError) Unwrap() error { return e.Err }

// Datapath is one node's eBPF datapath: its maps and programs, and the links
// attaching the programs to pod veths, all pinned under Config.PinDir.
// Methods are safe for concurrent use.
type Datapath struct {
	cfg       Config
	objs      objects
	innerSpec *ebpf.MapSpec // template of an endpoint's policy map
	// monoToWall converts CLOCK_MONOTONIC event timestamps to wall time.
	monoToWall time.Duration

	// mu serializes changes that read then write (links, ipcache sync).
	mu sync.Mutex
	// tc: attach with tc clsact filters (Config.Hook, or no tcx here).
	tc bool
}

// objects are the programs and maps of datapath.c, loaded.
type objects struct {
	datapathPrograms
	datapathMaps
}

func (o *objects) Close() error {
	return errors.Join(o.datapathPrograms.Close(), o.datapathMaps.Close())
}

// Open loads the datapath for the node whose pins live in cfg.PinDir, or
// adopts the one a previous process left there: pinned maps are reused with
// their contents, and each pinned link is switched to the freshly loaded
// program with an atomic link update when the program differs (never
// detached, so enforcement does not pause across an agent restart).
func Open(cfg Config) (*Datapath, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(cfg.PinDir, 0o700); err != nil {
		return nil, fmt.Errorf("open datapath: %w", err)
	}
	if err := checkBPFFS(cfg.PinDir); err != nil {
		return nil, fmt.Errorf("open datapath: %w", err)
	}
	if err := rlimit.RemoveMemlock(); err != nil {
		return nil, fmt.Errorf("open datapath: %w", err)
	}
	spec, err := loadDatapath()
	if err != nil {
		return nil, fmt.Errorf("open datapath: %w", err)
	}
	// The .bss of the ELF holds unused pointers whose only job is to
	// carry BTF types to bpf2go (datapath.c): no map for them.
	delete(spec.Maps, ".bss")
	clear(spec.Variables)
	d := &Datapath{cfg: cfg, innerSpec: spec.Maps[datapathMapPolicy].InnerMap.Copy()}
	err = spec.LoadAndAssign(&d.objs, &ebpf.CollectionOptions{Maps: ebpf.MapOptions{PinPath: cfg.PinDir}})
	if err != nil {
		var ve *ebpf.VerifierError
		if errors.As(err, &ve) {
			return nil, fmt.Errorf("open datapath: the verifier refused the programs: %w\n%+v", err, ve)
		}
		if errors.Is(err, ebpf.ErrMapIncompatible) {
			return nil, fmt.Errorf("open datapath: maps pinned in %s come from an incompatible version (remove them to start afresh, losing connection state): %w", cfg.PinDir, err)
		}
		return nil, fmt.Errorf("open datapath: %w", err)
	}
	d.monoToWall = monoToWall()
	if err := d.adoptLinks(); err != nil {
		d.objs.Close()
		return nil, fmt.Errorf("open datapath: %w", err)
	}
	return d, nil
}

// Close releases the process's handles. Pins and links stay in place, so
// the programs keep enforcing the last state written.
func (d *Datapath) Close() error {
	return d.objs.Close()
}

// Remove detaches the programs from every interface, unpins every map and
// removes the pin directory, then closes d. Enforcement stops; connection
// state is lost. For tests and uninstalling.
func (d *Datapath) Remove() error {
	var errs []error
	ifaces, err := d.attachedInterfaces()
	if err != nil {
		errs = append(errs, err)
	}
	for _, name := range ifaces {
		if err := d.Detach(name); err != nil {
			errs = append(errs, err)
		}
	}
	for _, m := range []*ebpf.Map{d.objs.Endpoints, d.objs.Ipcache, d.objs.Policy, d.objs.Conntrack, d.objs.Fragments, d.objs.Counters, d.objs.Events, d.objs.Config} {
		if err := m.Unpin(); err != nil {
			errs = append(errs, fmt.Errorf("unpin %s: %w", m, err))
		}
	}
	_ = os.Remove(filepath.Join(d.cfg.PinDir, linksDir))
	if err := os.Remove(d.cfg.PinDir); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, fmt.Errorf("remove %s: %w", d.cfg.PinDir, err))
	}
	errs = append(errs, d.Close())
	return errors.Join(errs...)
}

// checkBPFFS makes sure dir is on a bpf filesystem, where pins can live.
func checkBPFFS(dir string) error {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return fmt.Errorf("statfs %s: %w", dir, err)
	}
	if st.Type != unix.BPF_FS_MAGIC {
		return fmt.Errorf("pin dir %s is not on a bpf filesystem (mount -t bpf bpf /sys/fs/bpf)", dir)
	}
	return nil
}

// monoToWall is the offset from CLOCK_MONOTONIC (bpf_ktime_get_ns) to wall
// time.
func monoToWall() time.Duration {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		return 0
	}
	return time.Duration(time.Now().UnixNano() - ts.Nano())
}
