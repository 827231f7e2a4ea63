package identity

import "fmt"

// SPIFFEID returns the SPIFFE ID of a workload:
// spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>.
func SPIFFEID(trustDomain, namespace, serviceAccount string) string {
	return fmt.Sprintf("spiffe://%s/ns/%s/sa/%s", trustDomain, namespace, serviceAccount)
}
