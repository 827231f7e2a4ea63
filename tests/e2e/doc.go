// Package e2e proves Nodemesh on the virtual cluster (tests/vcluster): real
// agents enforcing real policies on real traffic between pods in network
// namespaces. Harness starts a cluster with an agent per node in standalone
// mode and lets tests change policies, probe connectivity, and kill and
// restart agents; `make demo` uses it too.
package e2e
