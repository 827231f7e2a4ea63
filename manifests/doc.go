// Package manifests holds Nodemesh's Kubernetes manifests (nodemesh.yaml,
// and the nodemesh-proxy overlay) and the test that keeps them true to the
// code: every document decodes strictly with the Kubernetes API types, the
// agent's arguments parse with the agent's own flags, the sockets and
// bootstrap paths the containers share are the ones the agent, meshctl and
// the proxies use by default, no declared port takes a proxy listener's
// port, and every image is pinned. It has no Go API.
package manifests
