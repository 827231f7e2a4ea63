// Package agenttest has fakes of the agent's Datapath and Links for tests
// of the control plane without privileges.
package agenttest
