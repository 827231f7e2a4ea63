package wireguard

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"testing"
)

// hostEnv, when set, makes the test binary a device host: the process
// (started inside a node's namespace, as an agent would be) opens the
// device described by the variable's JSON, sets its peers, prints
// "ready" and keeps the device until its standard input closes. The
// benchmark runs the embedded device this way, in a process of its own
// like Debian's wireguard-go.
const hostEnv = "NODEMESH_WG_DEVICE_HOST"

type hostSpec struct {
	Config Config
	Peers  []Peer
}

func TestMain(m *testing.M) {
	if spec := os.Getenv(hostEnv); spec != "" {
		os.Exit(hostDevice(spec))
	}
	os.Exit(m.Run())
}

func hostDevice(spec string) int {
	var s hostSpec
	if err := json.Unmarshal([]byte(spec), &s); err != nil {
		fmt.Fprintln(os.Stderr, "device host:", err)
		return 2
	}
	s.Config.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	d, err := Open(s.Config)
	if err == nil {
		err = d.SetPeers(s.Peers)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "device host:", err)
		return 1
	}
	fmt.Println("ready")
	_, _ = io.Copy(io.Discard, bufio.NewReader(os.Stdin))
	if err := d.Close(); err != nil {
		fmt.Fprintln(os.Stderr, "device host:", err)
		return 1
	}
	return 0
}
