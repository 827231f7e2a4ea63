package agent

import "github.com/nodemesh/nodemesh/certs"

// SetIdentitiesForTest gives a test agent an identity source, as the
// agent's setup does before Run when mTLS is enabled; m is nil for SPIRE.
func (a *Agent) SetIdentitiesForTest(src certs.Source, m *certs.Manager) {
	a.idSource, a.idManager = src, m
}
