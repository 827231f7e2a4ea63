// Command nodemesh-podtool is the program test pods run: echo, HTTP and
// load servers, and the clients that probe them. It is a test helper; see
// tests/podtool for what each subcommand does.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/nodemesh/nodemesh/tests/podtool"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	code := podtool.Main(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
