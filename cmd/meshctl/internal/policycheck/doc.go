// Package policycheck is `meshctl policy check`: it reads a world, policies
// and flows, checks every flow with a policy.Checker and prints the results
// as text, JSON or JSON Lines, or a reachability matrix.
//
// Input is validated in full before anything is printed: on any problem Run
// returns an error listing every problem, one per line, and writes nothing.
package policycheck
