// Package caserver serves the built-in CA (certs.CA) to the node agents of
// other processes, so that the CA's keys stay in the CA's process: agents
// send CSRs and receive certificates and trust bundles. Client implements
// certs.Issuer, so a node's certs.Manager uses a remote CA as it would one
// in process. Command nodemesh-ca runs it; 'meshctl ca' administers it.
//
// # Standalone mode: one socket per node
//
// The server listens on one unix socket per node, <dir>/nodes/<node>.sock
// (default dir /run/nodemesh/ca), and on an admin socket, <dir>/admin.sock.
// Sockets are mode 0600 and the directories 0700, owned by the CA's user.
//
// The node a request comes from is the socket it arrived on: that is the
// node's authentication in standalone mode. The server fills
// certs.SignRequest.Node from the socket, never from the request body; a
// body naming another node is logged and otherwise ignored, so node-a's
// socket cannot obtain an identity of node-b's pods (the Authorizer
// answers pod-on-other-node). Each node socket has a gRPC server of its
// own, whose handler knows its node.
//
// What keeps node-a's agent off node-b's socket is the operating system:
// file permissions and mount namespaces. Give each agent only its own
// socket (bind-mount it into the agent's mount namespace, or run agents as
// different users and chown the sockets). Be aware of what this does not
// do: agents that all run as root in one mount namespace on one host (as
// the test setups of several "nodes" in network namespaces do) can each
// reach every socket, and so can obtain any node's identities. That is no
// weaker than those agents' power over each other anyway (root can read
// the other agents' keys), but it is not node authentication in any
// stronger sense. Also, a socket file bind-mounted on its own is the inode
// of the moment: after a CA restart the mount shows the dead socket, so
// mount the socket's directory or restart the agent's mount. Kubernetes
// mode will authenticate nodes with service account tokens instead
// (issue 7).
//
// The server makes a socket for every node of the world (NodesOf: the
// nodes the world lists, and those its pods are scheduled on).
// FollowWorld reads the world files and follows their changes, as the
// agent's StandaloneSource does (an invalid change is refused, the last
// good world stays), and applies each world with SetWorld: sockets of new
// nodes appear, and those of removed nodes go away, closing their
// connections. The CA's Authorizer (certs/worldauth) decides from the same
// world. Node names must be DNS-1123 subdomains, as Kubernetes node names
// are. One CA process per socket directory: a new one removes the node
// sockets it finds there.
//
// # Protocol
//
// gRPC over the unix sockets, with JSON messages: a codec named "json" is
// forced on both ends, as the agent's API does, and the service
// descriptors are written by hand, so no code generator is involved.
// []byte fields travel as base64, certificates and CSRs as DER.
//
// Service nodemesh.ca.v1.CA, on the node sockets:
//
//   - Sign (unary): SignRequest{namespace, pod, serviceAccount, csr,
//     node (informational)} → SignResponse{chain: leaf first}. A refusal is
//     a gRPC status whose message is the CA's error text; its kind travels
//     in trailers (nodemesh-error-kind: denied, invalid-csr or
//     invalid-request; nodemesh-deny-reason: the certs.DenyReason such as
//     unknown-pod, pod-on-other-node, wrong-service-account;
//     nodemesh-deny-detail-bin). Denials are PermissionDenied, bad CSRs and
//     requests InvalidArgument. The Client turns them back into errors
//     that unwrap to *certs.DeniedError or certs.ErrInvalidCSR.
//   - WatchBundle (server streaming): BundleRequest{} → the current
//     BundleMessage{version, trustDomains: [{trustDomain, roots}]}, then
//     every new version, until the client goes or the server stops.
//
// Service nodemesh.ca.v1.Admin, on the admin socket only:
//
//   - Roots: RootsRequest{} → RootsResponse (trust domain, bundle version,
//     and per root serial, subject, SHA-256, state, validity, activation
//     and drop times; certs.RootInfo).
//   - RotateRoot: RotateRequest{activateAfterNanos} → RotateResponse: calls
//     CA.AddRoot(now + delay). The new root joins the bundle at once and
//     signs only after the delay, so that every node's agent has it before
//     any SVID it signed appears; give the delay enough time for that.
//
// # Client
//
// NewClient(socket) connects lazily and reconnects on its own. Sign
// returns errors as they are; the Manager retries with its own backoff.
// WatchBundle reconnects with backoff when the stream breaks (the CA
// restarted, or is not up yet) and returns only when its context ends. It
// passes a bundle on only when its roots changed, numbered with the
// client's own versions: a restarted CA counts from 1 again, and its new
// root makes the Manager renew at once the SVIDs the bundle no longer
// trusts.
//
// A restarted CA without --ca-root-cert/--ca-root-key generates a new root,
// so every SVID is renewed; give the CA an operator's root to avoid that.
package caserver
