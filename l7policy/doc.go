// Package l7policy is the application-layer part of the policy model: HTTP
// rules such as `GET /userdata/[0-9]+`, compiled once and matched against
// requests.
//
// Semantics, shared by the reference evaluator, the xDS generator and the
// proxy: a rule matches a request when every field it sets matches. Method,
// path and host are RE2 regular expressions that must match the whole value
// (as Envoy's safe_regex does); the path is matched without its query string.
// A header given as "Name" must be present; as "Name: value" it must equal
// value (names are case-insensitive). A rule set allows a request when any
// rule matches it; an empty rule matches every request.
//
// The package is pure Go.
package l7policy
