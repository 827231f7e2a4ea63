// Package certs gives workloads their SPIFFE identities as X.509-SVIDs: a
// built-in certificate authority, the per-node Manager that obtains and
// renews the SVIDs of a node's workloads, trust bundles, and VerifySVID,
// which the proxies and tests use to check a peer's certificate. Package
// certs/spire is the other identity source: SPIRE's Workload API.
//
// # Identities
//
// A workload's identity is its service account's SPIFFE ID,
// spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>
// (identity.SPIFFEID; WorkloadID here). Pods sharing a service account share
// an identity, and on one node share one SVID.
//
// An X.509-SVID of the built-in CA follows the SPIFFE X509-SVID standard:
// exactly one URI SAN, the SPIFFE ID, and no other name; basicConstraints
// CA:false and keyUsage digitalSignature only, both critical, so never
// keyCertSign or cRLSign; extKeyUsage serverAuth and clientAuth, since a
// proxy presents it in both directions; a random positive 128-bit serial;
// one hour of life (CAConfig.SVIDTTL). NotBefore lies 5 minutes before
// issuance (CAConfig.Backdate): a node whose clock runs behind the CA's
// would otherwise refuse a fresh SVID as not yet valid. NTP keeps nodes far
// closer than that, and the margin costs nothing, since a certificate cannot
// be used before it exists; renewal times count from issuance, not from
// NotBefore.
//
// # The CA
//
// A CA serves one trust domain. Its roots are ECDSA P-256: every Envoy
// accepts P-256 keys (P-256 has long been the one ECDSA curve Envoy takes
// for its certificates, and BoringSSL tunes it best), certificates and
// handshakes stay small, and key generation and signing take microseconds
// where RSA-2048 key generation takes tens of milliseconds, which matters
// for fresh keys every renewal; its 128-bit security level is ample for
// certificates that live an hour. Workload keys are P-256 too (the Manager
// makes them); the CA also accepts RSA keys of 2048 to 4096 bits in CSRs,
// which Envoy supports as well.
//
// The CA's keys never leave it: CA.Sign takes a SignRequest with a CSR
// (x509.CertificateRequest) and returns certificates; no method returns a
// key and nothing logs one. Sign checks the CSR's signature, that it asks
// for exactly the workload's SPIFFE ID and nothing else (no other URI, DNS,
// IP or email name, no extension besides the SAN), and that its key is
// ECDSA P-256 or RSA; errors wrap ErrInvalidCSR. Nothing of the CSR but its
// public key reaches the certificate. The root can be the CA's own,
// generated at start, or an operator's (CAConfig.RootCertFile/RootKeyFile);
// it may sign leaves only (path length 0).
//
// # Authorization
//
// A SignRequest names the requesting node and the workload (namespace, pod,
// service account). The CA asks its Authorizer whether that node may have
// that identity; a refusal is a *DeniedError whose DenyReason says why
// (unknown-pod, pod-on-other-node, wrong-service-account, pod-not-running,
// host-network-pod, no-node), so a node's agent gets SVIDs for the
// workloads running on it and for no others. Standalone mode decides from
// the world files (package certs/worldauth); Kubernetes mode will decide
// from the API server (issue 7). The CA trusts the node name it is given:
// in process the agent fills it in; a remote CA must take it from the
// transport's authentication of the node, never from the request body.
//
// # The Manager
//
// One Manager runs per node (ManagerConfig.NodeName). The agent tells it
// the node's workloads (SetWorkloads); for each SPIFFE ID it generates a
// key on the node, sends a CSR through the Issuer interface (the CA in
// process today, a client of a remote CA tomorrow), and renews at
// RenewFraction of the lifetime (half-life by default), with a fresh key
// each time. Failed requests are retried with exponential backoff (1s to
// 30s), at once when the workloads change; an SVID that expires unrenewed
// is withdrawn. Status reports each identity's pods, SVID, next request and
// last error (meshctl identities).
//
// The Manager is a Source: Snapshot returns the current SVIDs, one per
// SPIFFE ID, with the trust bundle; Watch calls back with every new
// Snapshot. Snapshots and SVIDs are immutable and a renewal makes a new
// *SVID, so comparing pointers finds what changed. The agent turns a
// snapshot into SDS secrets: per SPIFFE ID a tls_certificate
// (SVID.ChainPEM, SVID.KeyPEM), per trust domain a validation context
// (Bundle.PEM). Keys go only to the node's proxy; SVID's String, Format and
// LogValue never show them.
//
// # Trust bundles and CA rotation
//
// A Bundle is the set of root certificates trusted per trust domain, with a
// Version that grows with every change; a root vouches only for IDs of its
// own trust domain. The CA publishes its bundle through WatchBundle, the
// Manager passes it on in its snapshots, and every node gets it so.
//
// CA.AddRoot starts a rotation. The new root is trusted at once: it joins
// the bundle, which reaches every node before the root signs anything. From
// its activation time on it signs new SVIDs; SVIDs of the old root stay
// valid, and renew on their own schedule, because the old root stays in the
// bundle for RootOverlap (at least SVIDTTL, by default SVIDTTL) after the
// activation, then leaves it. A Manager renews at once any SVID whose root
// the bundle no longer has (say the CA restarted with a new root), so
// workloads do not wait for half-life to be trusted again.
//
// # Verification
//
// VerifySVID(chain, bundle, now) applies the X509-SVID rules to a peer's
// chain and returns its SPIFFE ID, or a *VerifyError whose Reason is a
// stable string for flow events and logs: svid-expired, svid-not-yet-valid,
// svid-wrong-trust-domain (no roots for the ID's trust domain),
// svid-unknown-ca, svid-multiple-uri-sans, svid-leaf-is-ca,
// svid-bad-key-usage, svid-no-spiffe-id, svid-invalid-chain,
// svid-malformed. Whether a valid ID may talk is the caller's policy
// (svid-id-not-allowed). Package certs imports no policy documents
// (certs/worldauth does), so the proxy can use it.
//
// # SPIRE
//
// Where SPIRE issues identities, certs/spire.Source replaces the CA and the
// Manager: it watches the X.509 contexts of the node SPIRE agent's Workload
// API (go-spiffe's workloadapi client, all SVIDs, not X509Source's single
// default one) and offers the same Source interface. The node agent then
// calls the Workload API itself and receives every SVID whose registration
// entry names it: for each service account with pods on a node, one entry
//
//	spiffeID: spiffe://<td>/ns/<namespace>/sa/<service-account>
//	parentID: the SPIRE agent of that node, e.g.
//	          spiffe://<td>/spire/agent/k8s_psat/<cluster>/<node-uid>
//	selectors: k8s:ns:<nodemesh agent's namespace>
//	           k8s:sa:<nodemesh agent's service account>
//
// The selectors are the nodemesh agent's, which makes it the delegate
// holding its workloads' SVIDs; the parent ID confines each entry to one
// node, as SPIRE hands an agent only the entries parented to it. Limits:
// someone must keep the entries in step with scheduling, one per node and
// service account (a controller, with issue 7); a new pod waits for the
// entry to reach the node's SPIRE agent; all of a node's SVIDs travel in
// one Workload API message, whose default 4 MiB gRPC limit allows about two
// thousand; entries must not share a hint, or go-spiffe drops all but the
// first. Parenting the entries to a node alias instead would be one entry
// per service account, but would give every node every identity.
//
// SPIRE's Delegated Identity API (the SPIRE agent's admin socket, for
// delegates listed in its authorized_delegates) fits better: the workloads
// keep their ordinary entries (selectors k8s:ns, k8s:sa of the pod, parent
// the node), SPIRE attests each pod itself, and the node agent subscribes
// per local pod. It is SPIRE's own API, not the SPIFFE Workload API: its
// client (spire-api-sdk) is not available to this build, so it is the next
// step behind the same Source interface, not this one. docs/spire.md has
// the deployment steps.
//
// # Tests
//
// certs/certstest has a fake Clock, so tests move time instead of sleeping;
// an Authority that mints valid and deliberately broken certificates; and
// shortcuts to a real CA. certs/spire/spiretest serves a fake Workload API
// on a unix socket, on go-spiffe's workload proto.
package certs
