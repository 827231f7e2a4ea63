package bpf

import (
	"encoding/binary"
	"math/bits"

	"github.com/nodemesh/nodemesh/policy"
)

// Constants shared with include/datapath.h; TestConstants holds them equal
// to package policy's where they mirror it.
const (
	peerDirFlags = 0xff // the kind of a direction's flags entry

	dirSelected = 0x01 // flags entry: some policy selects the endpoint
	dirEnforced = 0x02 // flags entry: default deny

	entryAuthRequired = 0x01

	ipcRemotePod = 0x01 // ipcache_value.flags: a mesh pod on another node
	ipcMTLSPeer  = 0x02 // ... whose node proxy accepts mTLS for it
	ipcNoTunnel  = 0x04 // ... whose node has no WireGuard peer while encryption is on

	// policyKeyFixedBits are the always-matched bits of a policy key:
	// dir, kind, proto, pad and peer_id.
	policyKeyFixedBits = 64
	policyKeyFullBits  = policyKeyFixedBits + 16
)

// portPrefix is an aligned block of 2^(16-Bits) ports starting at Port.
type portPrefix struct {
	Port uint16
	Bits int // 0: every port, 16: one port
}

// portPrefixes splits the range [lo, hi] into the fewest aligned
// power-of-two blocks, in order. A longest-prefix lookup of a port then
// finds the block containing it exactly when the port is in the range.
func portPrefixes(lo, hi uint16) []portPrefix {
	var out []portPrefix
	for l, h := uint32(lo), uint32(hi); l <= h; {
		size := uint32(1) << 16
		if l != 0 {
			size = l & -l // the largest block l is aligned to
		}
		for l+size-1 > h {
			size >>= 1
		}
		out = append(out, portPrefix{Port: uint16(l), Bits: 16 - bits.TrailingZeros32(size)})
		l += size
	}
	return out
}

// policyKV is one element of an endpoint's policy map.
type policyKV struct {
	Key   datapathPolicyKey
	Value datapathPolicyEntry
}

// ProxyPorts are the node proxy's transparent listeners that redirect
// entries send connections to. A zero port means no proxy serves that
// direction's L7 rules (none has ACKed a configuration for them): the
// datapath drops those connections as proxy-unavailable, fail closed.
type ProxyPorts struct {
	Ingress uint16 // the inbound listener: ingress L7 rules of local pods
	Egress  uint16 // the outbound listener: egress L7 rules of local pods
}

// policyEntries translates an endpoint's table into the elements of its
// policy map: per direction, the flags entry (selected, enforced) and, for
// every table entry, one LPM element per port prefix of its range. An
// element's rule is 1 + the entry's index in that direction's Entries(); a
// redirect element carries the direction's proxy port.
func policyEntries(t *policy.Table, proxy ProxyPorts) []policyKV {
	var out []policyKV
	for _, d := range []policy.Direction{policy.Ingress, policy.Egress} {
		dt := &t.Ingress
		if d == policy.Egress {
			dt = &t.Egress
		}
		var flags uint8
		if len(dt.Selected) > 0 {
			flags |= dirSelected
		}
		if dt.Enforced {
			flags |= dirEnforced
		}
		out = append(out, policyKV{
			Key:   datapathPolicyKey{Prefixlen: policyKeyFullBits, Dir: uint8(d), Kind: peerDirFlags},
			Value: datapathPolicyEntry{Flags: flags},
		})
		for i, e := range dt.Entries() {
			v := datapathPolicyEntry{Action: uint8(e.Action), Rule: uint32(i + 1)}
			if e.Action == policy.ActionRedirect {
				v.ProxyPort = proxy.Ingress
				if d == policy.Egress {
					v.ProxyPort = proxy.Egress
				}
			}
			if e.AuthRequired && e.Action != policy.ActionDeny {
				v.Flags |= entryAuthRequired
			}
			for _, pp := range portPrefixes(e.Lo, e.Hi) {
				out = append(out, policyKV{
					Key: datapathPolicyKey{
						Prefixlen: uint32(policyKeyFixedBits + pp.Bits),
						Dir:       uint8(d),
						Kind:      uint8(e.Peer.Kind),
						Proto:     uint8(e.Proto),
						PeerId:    hton32(e.Peer.ID),
						Port:      hton16(pp.Port),
					},
					Value: v,
				})
			}
		}
	}
	return out
}

// hton32 and hton16 give the value whose in-memory bytes are v in network
// byte order.
func hton32(v uint32) uint32 {
	var b [4]byte
	binary.BigEndian.PutUint32(b[:], v)
	return binary.NativeEndian.Uint32(b[:])
}

func hton16(v uint16) uint16 {
	var b [2]byte
	binary.BigEndian.PutUint16(b[:], v)
	return binary.NativeEndian.Uint16(b[:])
}

func ntoh16(v uint16) uint16 { return hton16(v) }
