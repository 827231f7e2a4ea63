package identity

import (
	"fmt"
	"strings"
)

// SPIFFEID returns the SPIFFE ID of a workload:
// spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>.
func SPIFFEID(trustDomain, namespace, serviceAccount string) string {
	return fmt.Sprintf("spiffe://%s/ns/%s/sa/%s", trustDomain, namespace, serviceAccount)
}

// ParseSPIFFEID is SPIFFEID's inverse: it returns the trust domain,
// namespace and service account of a workload SPIFFE ID, or an error for
// any other shape (another path, a query, a port, empty parts).
func ParseSPIFFEID(id string) (trustDomain, namespace, serviceAccount string, err error) {
	rest, ok := strings.CutPrefix(id, "spiffe://")
	if !ok {
		return "", "", "", fmt.Errorf("SPIFFE ID %q: want spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>", id)
	}
	parts := strings.Split(rest, "/")
	if len(parts) != 5 || parts[1] != "ns" || parts[3] != "sa" || parts[0] == "" || parts[2] == "" || parts[4] == "" ||
		strings.ContainsAny(rest, "?#:@") {
		return "", "", "", fmt.Errorf("SPIFFE ID %q: want spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>", id)
	}
	return parts[0], parts[2], parts[4], nil
}
