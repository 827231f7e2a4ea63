package wireguard

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// PrivateKey is a node's WireGuard private key. It never prints: every
// fmt verb, slog and text/JSON marshalling show only the public key, so a
// key that reaches a log line or an error does not leak.
type PrivateKey struct{ k wgtypes.Key }

// GeneratePrivateKey returns a new random private key.
func GeneratePrivateKey() (PrivateKey, error) {
	k, err := wgtypes.GeneratePrivateKey()
	if err != nil {
		return PrivateKey{}, fmt.Errorf("generate wireguard key: %w", err)
	}
	return PrivateKey{k}, nil
}

// PublicKey returns the key peers configure for this node.
func (p PrivateKey) PublicKey() wgtypes.Key { return p.k.PublicKey() }

// IsZero reports whether p is the zero value (no key).
func (p PrivateKey) IsZero() bool { return p.k == wgtypes.Key{} }

// String shows the public key only.
func (p PrivateKey) String() string {
	if p.IsZero() {
		return "private key (none)"
	}
	return "private key (redacted) of public key " + p.PublicKey().String()
}

// GoString is String, for %#v.
func (p PrivateKey) GoString() string { return p.String() }

// Format prints String for every verb (%x, %v, %+v, %q, ...).
func (p PrivateKey) Format(f fmt.State, _ rune) { _, _ = f.Write([]byte(p.String())) }

// LogValue shows the public key only.
func (p PrivateKey) LogValue() slog.Value { return slog.StringValue(p.String()) }

// MarshalText shows the public key only.
func (p PrivateKey) MarshalText() ([]byte, error) { return []byte(p.String()), nil }

// LoadOrCreateKey returns the private key kept at path, creating it first
// when the file does not exist (created reports that). A new key is
// written 0600 in a directory made 0700 if missing, through a temporary
// file linked into place, so a crash never leaves a partial key and a key
// another process created meanwhile is kept, not replaced. An existing
// file that group or others may read, that is not a regular file, or that
// does not hold a key is refused.
func LoadOrCreateKey(path string) (PrivateKey, bool, error) {
	k, err := loadKey(path)
	if err == nil {
		return k, false, nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return PrivateKey{}, false, err
	}
	k, err = GeneratePrivateKey()
	if err != nil {
		return PrivateKey{}, false, err
	}
	if err := writeKey(path, k, false); err != nil {
		if errors.Is(err, fs.ErrExist) {
			k, err := loadKey(path) // another process won the race
			return k, false, err
		}
		return PrivateKey{}, false, err
	}
	return k, true, nil
}

// StoreKey replaces the key at path with k, atomically, with the same
// permissions as LoadOrCreateKey; a rotation stores the new key before
// the device uses it, so a restart keeps it.
func StoreKey(path string, k PrivateKey) error {
	if k.IsZero() {
		return fmt.Errorf("store wireguard key %s: the key is empty", path)
	}
	return writeKey(path, k, true)
}

func loadKey(path string) (PrivateKey, error) {
	fi, err := os.Lstat(path)
	if err != nil {
		return PrivateKey{}, fmt.Errorf("wireguard key %s: %w", path, err)
	}
	if !fi.Mode().IsRegular() {
		return PrivateKey{}, fmt.Errorf("wireguard key %s: not a regular file (%s); remove it or point --wireguard-key-file at the key", path, fi.Mode().Type())
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return PrivateKey{}, fmt.Errorf("wireguard key %s: mode %04o lets group or others read the private key; run chmod 600 %s, and replace the key if anyone else may have read it", path, perm, path)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return PrivateKey{}, fmt.Errorf("wireguard key %s: %w", path, err)
	}
	// The parse error is not wrapped: it might quote the file's bytes.
	k, err := wgtypes.ParseKey(strings.TrimSpace(string(b)))
	if err != nil {
		return PrivateKey{}, fmt.Errorf("wireguard key %s: not a base64 WireGuard key (%d bytes); remove the file to have a new key made, or write one with `wg genkey`", path, len(b))
	}
	return PrivateKey{k}, nil
}

func writeKey(path string, k PrivateKey, replace bool) error {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("wireguard key directory %s: %w", dir, err)
	}
	tmp, err := os.CreateTemp(dir, ".wireguard-key-*") // mode 0600
	if err != nil {
		return fmt.Errorf("write wireguard key %s: %w", path, err)
	}
	defer os.Remove(tmp.Name())
	_, err = tmp.WriteString(k.k.String() + "\n")
	if err == nil {
		err = tmp.Chmod(0o600)
	}
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		if replace {
			err = os.Rename(tmp.Name(), path)
		} else {
			err = os.Link(tmp.Name(), path) // fails if path appeared
		}
	}
	if err != nil {
		return fmt.Errorf("write wireguard key %s: %w", path, err)
	}
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync()
		d.Close()
	}
	return nil
}
