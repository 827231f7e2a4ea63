package certs

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/x509"
	"errors"
	"fmt"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/nodemesh/nodemesh/identity"
)

// Workload names the pod an SVID is for.
type Workload struct {
	Namespace      string
	Pod            string
	ServiceAccount string
}

func (w Workload) String() string { return w.Namespace + "/" + w.Pod }

// WorkloadID returns the SPIFFE ID of w's service account in td:
// spiffe://<td>/ns/<namespace>/sa/<service-account>.
func WorkloadID(td spiffeid.TrustDomain, w Workload) (spiffeid.ID, error) {
	if w.Namespace == "" || w.ServiceAccount == "" {
		return spiffeid.ID{}, fmt.Errorf("workload %s: namespace and service account are required", w)
	}
	id, err := spiffeid.FromString(identity.SPIFFEID(td.Name(), w.Namespace, w.ServiceAccount))
	if err != nil {
		return spiffeid.ID{}, fmt.Errorf("workload %s: SPIFFE ID: %w", w, err)
	}
	return id, nil
}

// SignRequest asks the CA for the SVID of a workload on behalf of a node.
type SignRequest struct {
	// Node is the requesting node. Whoever hands the request to the CA
	// vouches for it: in process the agent itself, over a network the
	// transport's authentication of the node.
	Node     string
	Workload Workload
	// CSR carries the workload's public key (generated on the node) and
	// requests exactly the workload's SPIFFE ID.
	CSR *x509.CertificateRequest
}

// ErrInvalidCSR is wrapped by Sign's errors about the CSR itself.
var ErrInvalidCSR = errors.New("invalid CSR")

var oidSubjectAltName = []int{2, 5, 29, 17}

// checkCSR holds a CSR to the one thing it may ask for: id, for a key the
// proxies can use. Everything else in it is refused rather than ignored, so
// a confused or malicious requester learns at once.
func checkCSR(csr *x509.CertificateRequest, id spiffeid.ID) error {
	if csr == nil {
		return fmt.Errorf("%w: none", ErrInvalidCSR)
	}
	if err := csr.CheckSignature(); err != nil {
		return fmt.Errorf("%w: signature: %v", ErrInvalidCSR, err)
	}
	switch k := csr.PublicKey.(type) {
	case *ecdsa.PublicKey:
		if k.Curve != elliptic.P256() {
			return fmt.Errorf("%w: ECDSA key on %s, want P-256", ErrInvalidCSR, k.Curve.Params().Name)
		}
	case *rsa.PublicKey:
		if n := k.N.BitLen(); n < 2048 || n > 4096 {
			return fmt.Errorf("%w: %d-bit RSA key, want 2048 to 4096 bits", ErrInvalidCSR, n)
		}
	default:
		return fmt.Errorf("%w: %T key, want ECDSA P-256 or RSA", ErrInvalidCSR, csr.PublicKey)
	}
	if len(csr.URIs) != 1 || csr.URIs[0].String() != id.String() {
		return fmt.Errorf("%w: requests URI SANs %v, want exactly [%s]", ErrInvalidCSR, csr.URIs, id)
	}
	if len(csr.DNSNames) > 0 || len(csr.EmailAddresses) > 0 || len(csr.IPAddresses) > 0 {
		return fmt.Errorf("%w: requests names besides the SPIFFE ID (DNS %v, email %v, IP %v)", ErrInvalidCSR, csr.DNSNames, csr.EmailAddresses, csr.IPAddresses)
	}
	for _, ext := range csr.Extensions {
		if !ext.Id.Equal(oidSubjectAltName) {
			return fmt.Errorf("%w: requests extension %s", ErrInvalidCSR, ext.Id)
		}
	}
	return nil
}

// DenyReason says why an Authorizer refused a request. The values are stable.
type DenyReason string

// Reasons for refusing a SignRequest.
const (
	DenyUnknownPod          DenyReason = "unknown-pod"           // no such pod in the namespace
	DenyPodOnOtherNode      DenyReason = "pod-on-other-node"     // the pod runs elsewhere, or is not scheduled
	DenyWrongServiceAccount DenyReason = "wrong-service-account" // the pod runs as another service account
	DenyPodNotRunning       DenyReason = "pod-not-running"       // the pod has terminated
	DenyHostNetwork         DenyReason = "host-network-pod"      // the pod shares the node's network; the mesh cannot tell its traffic from the node's
	DenyNoNode              DenyReason = "no-node"               // the request names no node
)

// DeniedError is returned by an Authorizer that refuses a request.
type DeniedError struct {
	Reason DenyReason
	Detail string
}

func (e *DeniedError) Error() string { return "denied: " + string(e.Reason) + ": " + e.Detail }
