// Package certs will be the built-in certificate authority that issues
// X.509-SVIDs for the SPIFFE IDs of package identity, and the SPIRE Workload
// API client that can replace it.
//
// Status: not yet implemented (issue 5).
package certs
