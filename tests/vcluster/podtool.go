package vcluster

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// PodtoolEnv names a prebuilt nodemesh-podtool to use instead of building.
const PodtoolEnv = "NODEMESH_PODTOOL"

const (
	podtoolPkg       = "github.com/nodemesh/nodemesh/cmd/nodemesh-podtool"
	podtoolDirPrefix = "podtool."
)

// podtool is the one build per process.
var podtool struct {
	once sync.Once
	dir  string
	path string
	err  error
}

// PodtoolPath returns a nodemesh-podtool binary: $NODEMESH_PODTOOL when set,
// otherwise a static build made once per process into a directory under
// StateDir (RemovePodtool or a later Sweep removes it). It must run inside
// the nodemesh module (tests do).
func PodtoolPath() (string, error) {
	if p := os.Getenv(PodtoolEnv); p != "" {
		st, err := os.Stat(p)
		if err != nil {
			return "", fmt.Errorf("%s: %w", PodtoolEnv, err)
		}
		if st.IsDir() || st.Mode()&0o111 == 0 {
			return "", fmt.Errorf("%s: %s is not an executable file", PodtoolEnv, p)
		}
		return filepath.Abs(p)
	}
	podtool.once.Do(func() {
		podtool.path, podtool.err = buildPodtool()
	})
	return podtool.path, podtool.err
}

func buildPodtool() (string, error) {
	goBin, err := exec.LookPath("go")
	if err != nil {
		if root := os.Getenv("GOROOT"); root != "" {
			goBin = filepath.Join(root, "bin", "go")
		} else {
			return "", fmt.Errorf("build podtool: no go command (or set %s): %w", PodtoolEnv, err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	gomod, err := exec.CommandContext(ctx, goBin, "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("build podtool: go env GOMOD: %w", err)
	}
	mod := strings.TrimSpace(string(gomod))
	if mod == "" || mod == os.DevNull {
		return "", fmt.Errorf("build podtool: not inside the nodemesh module (or set %s)", PodtoolEnv)
	}
	dir, err := claimStateDir(podtoolDirPrefix + strconv.Itoa(os.Getpid()))
	if err != nil {
		return "", fmt.Errorf("build podtool: %w", err)
	}
	podtool.dir = dir
	out := filepath.Join(dir, "nodemesh-podtool")
	cmd := exec.CommandContext(ctx, goBin, "build", "-o", out, podtoolPkg)
	cmd.Dir = filepath.Dir(mod)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		os.RemoveAll(dir)
		return "", fmt.Errorf("build podtool: %w: %s", err, b)
	}
	return out, nil
}

// BuildPodtool is PodtoolPath for tests: it fails the test when there is no
// binary.
func BuildPodtool(t testing.TB) string {
	t.Helper()
	p, err := PodtoolPath()
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// RemovePodtool deletes this process's podtool build, if any. Call it at
// the end of TestMain; a later Sweep removes it otherwise.
func RemovePodtool() error {
	if podtool.dir == "" {
		return nil
	}
	err := os.RemoveAll(podtool.dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	return err
}
