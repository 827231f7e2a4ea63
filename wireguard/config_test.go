package wireguard

import (
	"strings"
	"testing"

	"github.com/spf13/pflag"
)

func TestConfig(t *testing.T) {
	for _, tc := range []struct {
		name    string
		tweak   func(*Config)
		wantErr string
	}{
		{"defaults", func(*Config) {}, ""},
		{"no key file", func(c *Config) { c.KeyFile = "" }, "--wireguard-key-file is required"},
		{"long interface", func(c *Config) { c.Interface = "nodemesh_wireguard0" }, "--wireguard-interface"},
		{"bad mode", func(c *Config) { c.Mode = "ipsec" }, "want auto, kernel or userspace"},
		{"bad port", func(c *Config) { c.ListenPort = 70000 }, "--wireguard-listen-port 70000"},
		{"small mtu", func(c *Config) { c.MTU = 576 }, "--wireguard-mtu 576"},
		{"main table", func(c *Config) { c.RouteTable = 254 }, "not default, main or local"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := Config{KeyFile: "/var/lib/nodemesh/wireguard.key"}
			c.Defaults()
			tc.tweak(&c)
			err := c.Validate()
			if tc.wantErr == "" && err != nil || tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)) {
				t.Fatalf("err = %v, want %q", err, tc.wantErr)
			}
		})
	}
	c := Config{}
	c.Defaults()
	if c.Interface != "nm_wg0" || c.ListenPort != 51871 || c.Mode != ModeAuto || c.MTU != 1420 {
		t.Errorf("defaults = %+v", c)
	}
	fs := pflag.NewFlagSet("agent", pflag.ContinueOnError)
	c.BindFlags(fs)
	if err := fs.Parse([]string{"--wireguard-interface=wg1", "--wireguard-listen-port=51900", "--wireguard-key-file=/k", "--wireguard-mode=userspace", "--wireguard-mtu=1380"}); err != nil {
		t.Fatal(err)
	}
	if c.Interface != "wg1" || c.ListenPort != 51900 || c.KeyFile != "/k" || c.Mode != ModeUserspace || c.MTU != 1380 {
		t.Errorf("after flags = %+v", c)
	}
}
