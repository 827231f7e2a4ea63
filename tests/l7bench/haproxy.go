package l7bench

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// HAProxyConfig is the peer's configuration: a plain reverse proxy on
// ProxyClientSide:HAProxyPort to the backend, with the ACL equivalent of the
// nodemesh policy's one HTTP rule (method GET and a path fully matching
// /userdata/[0-9]+; anything else gets 403), keep-alive on both sides (the
// HAProxy 2.x default, with idle server connections reused), no logging (the
// generated Envoy configuration has no access log either).
func HAProxyConfig(threads int) string {
	return fmt.Sprintf(`global
	nbthread %d
	maxconn 4096

defaults
	mode http
	timeout connect 5s
	timeout client 60s
	timeout server 60s
	timeout http-keep-alive 60s

frontend l7bench
	bind %s
	http-request deny deny_status 403 if !{ method GET } || !{ path_reg ^/userdata/[0-9]+$ }
	default_backend server

backend server
	server s1 %s
`, threads, net.JoinHostPort(ProxyClientSide.String(), strconv.Itoa(HAProxyPort)),
		net.JoinHostPort(ServerAddr.String(), strconv.Itoa(ServicePort)))
}

// HAProxyAddr is where the client reaches HAProxy.
func HAProxyAddr() string {
	return net.JoinHostPort(ProxyClientSide.String(), strconv.Itoa(HAProxyPort))
}

// StartHAProxy runs haproxy in the proxy namespace with threads threads,
// pinned to cpus, and waits until it accepts connections.
func (t *Topology) StartHAProxy(ctx context.Context, threads int, cpus string) (*Process, error) {
	bin, err := exec.LookPath("haproxy")
	if err != nil {
		return nil, fmt.Errorf("haproxy: %w (scripts/deps.sh installs it)", err)
	}
	cfg := filepath.Join(t.Dir, fmt.Sprintf("haproxy-%d.cfg", threads))
	if err := os.WriteFile(cfg, []byte(HAProxyConfig(threads)), 0o644); err != nil {
		return nil, err
	}
	if out, err := exec.CommandContext(ctx, bin, "-c", "-q", "-f", cfg).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("haproxy -c %s: %w: %s", cfg, err, out)
	}
	// -db: foreground, no daemon; the process group is ours to stop.
	p, err := t.Start(fmt.Sprintf("haproxy-%dt", threads), t.Proxy, cpus, nil, bin, "-db", "-f", cfg)
	if err != nil {
		return nil, err
	}
	if err := t.waitAccepting(ctx, p, t.Client, HAProxyAddr()); err != nil {
		p.Stop()
		return nil, err
	}
	return p, nil
}

// waitAccepting dials addr from namespace ns until it connects (10 s at
// most) or p exits.
func (t *Topology) waitAccepting(ctx context.Context, p *Process, ns, addr string) error {
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := DialIn(ns, addr, time.Second)
		if err == nil {
			c.Close()
			return nil
		}
		if perr := p.Exited(); perr != nil {
			return perr
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: not accepting on %s after 10s: %w\n%s", p.Name, addr, err, strings.TrimSpace(p.Log()))
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}
