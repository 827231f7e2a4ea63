// Command meshctl is Nodemesh's command-line tool. Today it checks policy
// offline (`meshctl policy check`); later it will ask node agents what they
// enforce, show the Envoy config served to each node and stream flows.
//
// The commands are assembled in root.go and policy.go; their work is done in
// internal packages (policycheck) and in the policy model itself, so that
// `meshctl policy check` answers exactly as the nodes' compiled tables do.
package main
