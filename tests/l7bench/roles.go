package l7bench

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"runtime/pprof"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/pflag"

	"github.com/nodemesh/nodemesh/proxy"
)

// RoleEnv makes the test binary play a part in the topology instead of
// running tests: "backend" (the server namespace's HTTP server) or
// "proxy" (package proxy with a CPU profile, for finding where
// nodemesh-proxy's time goes; it takes nodemesh-proxy's flags).
const RoleEnv = "NODEMESH_L7BENCH_ROLE"

const (
	backendAddrsEnv = "NODEMESH_L7BENCH_BACKEND"
	// ProfileEnv names the CPU profile the proxy role writes.
	ProfileEnv = "NODEMESH_L7BENCH_CPUPROFILE"
)

// roleLifetime bounds a role's run, should the test binary that started it
// die without stopping it (the benchmark's own timeout is 30 minutes).
const roleLifetime = 45 * time.Minute

// RunRole runs the role $NODEMESH_L7BENCH_ROLE names until SIGTERM (or
// for roleLifetime at most) and exits; it returns when no role is set.
// Call it first in TestMain.
func RunRole() {
	role := os.Getenv(RoleEnv)
	if role == "" {
		return
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, roleLifetime)
	defer cancel()
	var err error
	switch role {
	case "backend":
		err = ServeBackend(ctx, strings.Split(os.Getenv(backendAddrsEnv), ",")...)
	case "proxy":
		err = runProfiledProxy(ctx, os.Args[1:])
	default:
		err = fmt.Errorf("unknown role %q", role)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "l7bench %s: %v\n", role, err)
		os.Exit(1)
	}
	os.Exit(0)
}

// runProfiledProxy is cmd/nodemesh-proxy's main with a CPU profile of the
// whole run.
func runProfiledProxy(ctx context.Context, args []string) error {
	var cfg proxy.Config
	fs := pflag.NewFlagSet("proxy", pflag.ContinueOnError)
	cfg.BindFlags(fs)
	if err := fs.Parse(args); err != nil {
		return err
	}
	cfg.Defaults()
	if err := cfg.Validate(); err != nil {
		return err
	}
	path := os.Getenv(ProfileEnv)
	if path == "" {
		return errors.New(ProfileEnv + " is not set")
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return err
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	runErr := proxy.New(cfg, log).Run(ctx)
	pprof.StopCPUProfile()
	return errors.Join(runErr, f.Close())
}
