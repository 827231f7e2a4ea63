package vcluster

import (
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// BPFFSMount is the BPF filesystem vcluster pins under; it is mounted on
// first use when missing and left mounted.
const BPFFSMount = "/sys/fs/bpf"

func ensureBPFFS() error {
	if isFS(BPFFSMount, unix.BPF_FS_MAGIC) {
		return nil
	}
	unlock, err := lockState()
	if err != nil {
		return err
	}
	defer unlock()
	if isFS(BPFFSMount, unix.BPF_FS_MAGIC) {
		return nil
	}
	if err := os.MkdirAll(BPFFSMount, 0o755); err != nil {
		return fmt.Errorf("bpffs mount point: %w", err)
	}
	if err := unix.Mount("bpf", BPFFSMount, "bpf", 0, ""); err != nil {
		return fmt.Errorf("mount bpffs at %s: %w", BPFFSMount, err)
	}
	return nil
}

// clusterBPFFS is the cluster's pin directory.
func clusterBPFFS(cluster string) string {
	return filepath.Join(BPFFSMount, "nodemesh-"+cluster)
}
