// Package wireguard runs a node's WireGuard device: the node's key, the
// device itself, its peers (the other nodes) and the routes into it.
//
// # Keys
//
// LoadOrCreateKey keeps the node's private key in a file (Config.KeyFile,
// base64 as `wg genkey` writes it): created at first start, 0600 in a 0700
// directory, written to a temporary file and linked into place. A key file
// that group or others may read is refused, not repaired. A PrivateKey
// never prints: fmt, slog and marshalling show its public key only, and
// no log line or error of this package carries private key material.
//
// # Device
//
// Open creates the device in the network namespace of the calling thread:
// a kernel link of type wireguard when the kernel has the module (Mode
// "auto" or "kernel"), otherwise (Mode "auto" or "userspace") the embedded
// device of golang.zx2c4.com/wireguard on a TUN device, serving the
// standard UAPI socket /var/run/wireguard/<interface>.sock. Both kinds are
// configured the same way, through wgctrl, so `wg show` works on either.
// An existing kernel link of the same name is adopted with its peers and
// sessions. Close stops a userspace device (its TUN and routes go with
// the process); a kernel device stays, forwarding, for the next Open.
//
// # Peers and routes
//
// SetPeers makes the device's peers exactly the given ones in one wgctrl
// call (existing peers keep their sessions) and makes routing table
// Config.RouteTable (2005) hold one route per allowed prefix through the
// device. Open installs the rule "not fwmark 0x1000/0x1000 lookup 2005"
// at priority 91 (after redirect's rule, before main); the device marks
// its own UDP packets with 0x1000, so they never route into the tunnel.
// The table belongs to this package: SetPeers deletes anything else in
// it. A prefix with no peer is not routed by the table; what happens to
// such traffic (plaintext over the main table, or a drop in strict mode)
// is the caller's decision.
//
// # Handshakes and key rotation
//
// Every peer gets a persistent keepalive (Config.PersistentKeepalive, 25 s):
// setting it greets a new peer at once, so the handshake happens when a
// node is learned, after this node restarts, or when a peer's key
// changes, rather than when traffic waits for it. SetPrivateKey replaces
// the key and expires the sessions with every peer (both implementations
// do): traffic stops until each peer has the new public key (SetPeers on
// their side, which greets it), then resumes on the same TCP connections.
//
// # Namespaces
//
// Sockets and TUN devices belong to the namespace of the thread that
// creates them. A device opened on a thread moved into another namespace
// than the process's (tests run two nodes in one process) reopens its
// UDP sockets in its own namespace whichever goroutine does it.
//
// # Errors
//
// Errors name the interface and say what to change; ErrKernelUnsupported
// marks Mode "kernel" without the module.
package wireguard
