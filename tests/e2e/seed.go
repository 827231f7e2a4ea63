package e2e

// SeedPolicies are the seed texts' policies at L3/L4, as the demo and the
// end-to-end tests apply them: seed 004 (backend accepts frontend on TCP 80;
// 9000 too, for load tests), the egress rule seed 004's prose asks for but
// its YAML lacks, and seed 001's zero-trust policy with the endpointSelector
// it lacked.
const SeedPolicies = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: frontend-backend-policy, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: backend}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: frontend}}]
    toPorts: [{ports: [{port: "80", protocol: TCP}, {port: "9000", protocol: TCP}]}]
---
apiVersion: nodemesh.io/v1
kind: MeshNetworkPolicy
metadata: {name: backend-no-egress, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: backend}}
  egress: [{}]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: zero-trust, namespace: default}
spec:
  endpointSelector: {matchLabels: {name: secret-pods}}
  egress: [{toEndpoints: [{matchLabels: {name: secret-pods}}]}]
  ingress: [{fromEndpoints: [{matchLabels: {name: secret-pods}}]}]
`
