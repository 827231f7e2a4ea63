package vcluster

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"time"

	"golang.org/x/sys/unix"
)

// Cgroup2Mount is where vcluster mounts a cgroup v2 hierarchy when it needs
// one. The machines mount cgroup v1 at /sys/fs/cgroup; a second cgroup2
// mount shows the one unified hierarchy, so it is shared by every run and
// never unmounted.
const Cgroup2Mount = "/run/nodemesh-cgroup2"

// cgroup2Root returns a cgroup2 mount point, mounting it on first use.
func cgroup2Root() (string, error) {
	if isFS(Cgroup2Mount, unix.CGROUP2_SUPER_MAGIC) {
		return Cgroup2Mount, nil
	}
	unlock, err := lockState()
	if err != nil {
		return "", err
	}
	defer unlock()
	if isFS(Cgroup2Mount, unix.CGROUP2_SUPER_MAGIC) {
		return Cgroup2Mount, nil
	}
	if err := os.MkdirAll(Cgroup2Mount, 0o755); err != nil {
		return "", fmt.Errorf("cgroup2 mount point: %w", err)
	}
	if err := unix.Mount("none", Cgroup2Mount, "cgroup2", 0, ""); err != nil {
		return "", fmt.Errorf("mount cgroup2 at %s: %w", Cgroup2Mount, err)
	}
	return Cgroup2Mount, nil
}

func isFS(path string, magic int64) bool {
	var st unix.Statfs_t
	return unix.Statfs(path, &st) == nil && int64(st.Type) == magic
}

// clusterCgroup is the cluster's cgroup directory under root.
func clusterCgroup(root, cluster string) string {
	return filepath.Join(root, "nodemesh-"+cluster)
}

// killCgroup kills every process in dir and below (cgroup.kill, Linux 5.14).
func killCgroup(dir string) error {
	err := os.WriteFile(filepath.Join(dir, "cgroup.kill"), []byte("1"), 0o644)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	return err
}

// removeCgroupTree kills what runs in dir and removes it, children first.
// Killed tasks leave their cgroup asynchronously, so rmdir retries on EBUSY
// for a while.
func removeCgroupTree(dir string) error {
	if _, err := os.Stat(dir); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err := killCgroup(dir); err != nil {
		return fmt.Errorf("kill cgroup %s: %w", dir, err)
	}
	var dirs []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			dirs = append(dirs, p)
		}
		return nil
	})
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("walk cgroup %s: %w", dir, err)
	}
	slices.Reverse(dirs) // children before parents
	deadline := time.Now().Add(5 * time.Second)
	for _, d := range dirs {
		for {
			err := unix.Rmdir(d)
			if err == nil || errors.Is(err, unix.ENOENT) {
				break
			}
			if !errors.Is(err, unix.EBUSY) || time.Now().After(deadline) {
				return fmt.Errorf("remove cgroup %s: %w", d, err)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	return nil
}
