package wireguard

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestLoadOrCreateKey(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "var", "lib", "nodemesh")
	path := filepath.Join(dir, "wireguard.key")

	k1, created, err := LoadOrCreateKey(path)
	if err != nil || !created || k1.IsZero() {
		t.Fatalf("first start: created=%v err=%v, want a new key", created, err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("key file mode %04o, want 0600", fi.Mode().Perm())
	}
	di, err := os.Stat(dir)
	if err != nil {
		t.Fatal(err)
	}
	if di.Mode().Perm() != 0o700 {
		t.Errorf("key directory mode %04o, want 0700", di.Mode().Perm())
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 1 {
		t.Errorf("key directory holds %d files, want only the key (no temporary left)", len(ents))
	}

	k2, created, err := LoadOrCreateKey(path)
	if err != nil || created {
		t.Fatalf("second start: created=%v err=%v, want the existing key", created, err)
	}
	if k2.PublicKey() != k1.PublicKey() {
		t.Errorf("second start has public key %s, first %s", k2.PublicKey(), k1.PublicKey())
	}

	// wg(8) reads the same file.
	b, _ := os.ReadFile(path)
	if strings.TrimSpace(string(b)) != k1.k.String() {
		t.Error("the file is not the key in wg genkey's base64 form")
	}

	k3, _ := GeneratePrivateKey()
	if err := StoreKey(path, k3); err != nil {
		t.Fatal(err)
	}
	if k, created, err := LoadOrCreateKey(path); err != nil || created || k.PublicKey() != k3.PublicKey() {
		t.Errorf("after StoreKey: %v created=%v err=%v, want the stored key", k, created, err)
	}
}

func TestLoadKeyRefusals(t *testing.T) {
	good, _ := GeneratePrivateKey()
	for _, tc := range []struct {
		name    string
		setup   func(path string)
		wantErr string
	}{
		{"readable by others", func(p string) { write(t, p, good.k.String()+"\n", 0o644) }, "chmod 600"},
		{"readable by group", func(p string) { write(t, p, good.k.String()+"\n", 0o640) }, "lets group or others read"},
		{"not a key", func(p string) { write(t, p, "hunter2-not-a-key\n", 0o600) }, "not a base64 WireGuard key"},
		{"empty", func(p string) { write(t, p, "", 0o600) }, "not a base64 WireGuard key"},
		{"directory", func(p string) { os.Mkdir(p, 0o700) }, "not a regular file"},
		{"symlink", func(p string) {
			write(t, p+".real", good.k.String(), 0o600)
			os.Symlink(p+".real", p)
		}, "not a regular file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "wireguard.key")
			tc.setup(path)
			before, _ := os.ReadFile(path)
			_, _, err := LoadOrCreateKey(path)
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("err = %v, want %q", err, tc.wantErr)
			}
			if strings.Contains(err.Error(), good.k.String()) || strings.Contains(err.Error(), "hunter2") {
				t.Errorf("the error quotes the key file: %v", err)
			}
			if after, _ := os.ReadFile(path); !bytes.Equal(before, after) {
				t.Error("a refused key file was changed")
			}
		})
	}
}

func write(t *testing.T, path, s string, mode os.FileMode) {
	t.Helper()
	if err := os.WriteFile(path, []byte(s), mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, mode); err != nil { // past the umask
		t.Fatal(err)
	}
}

// TestPrivateKeyNeverPrints formats a key every way a log line or error
// might.
func TestPrivateKeyNeverPrints(t *testing.T) {
	k, _ := GeneratePrivateKey()
	secrets := []string{k.k.String(), hex.EncodeToString(k.k[:]), fmt.Sprint(k.k[:]), fmt.Sprintf("%x", k.k[:])}
	var logs bytes.Buffer
	slog.New(slog.NewJSONHandler(&logs, nil)).Info("key", "k", k, "ptr", &k)
	slog.New(slog.NewTextHandler(&logs, nil)).Info("key", "k", k)
	js, _ := json.Marshal(map[string]any{"k": k})
	outs := []string{
		fmt.Sprint(k), fmt.Sprintf("%v %+v %#v %s %q %x %X %d", k, k, k, k, k, k, k, k),
		fmt.Sprintf("%v", struct{ K PrivateKey }{k}), fmt.Sprintf("%+v", []PrivateKey{k}),
		fmt.Errorf("wrap: %v", k).Error(), logs.String(), string(js),
	}
	for _, out := range outs {
		for _, s := range secrets {
			if strings.Contains(out, s) {
				t.Errorf("the private key shows in %q", out)
			}
		}
		if !strings.Contains(out, k.PublicKey().String()) {
			t.Errorf("%q does not name the public key", out)
		}
	}
}
