package api_test

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/nodemesh/nodemesh/api"
)

// FuzzDecodePolicies feeds arbitrary bytes to the policy decoder: it must
// never panic, and must return either documents or an error, never both.
func FuzzDecodePolicies(f *testing.F) {
	for _, glob := range []string{"../examples/policies/*.yaml", "../policy/testdata/cilium/*.yaml"} {
		files, _ := filepath.Glob(glob)
		for _, file := range files {
			if data, err := os.ReadFile(file); err == nil {
				f.Add(data)
			}
		}
	}
	f.Add([]byte(cnpHeader + "spec:\n  endpointSelector: {}\n  ingress:\n  - toPorts:\n    - ports: [{port: \"80\", protocol: TCP}]\n      rules: {http: [{method: GET, path: \"/userdata/[0-9]+\"}]}\n"))
	f.Add([]byte(`{"apiVersion":"networking.k8s.io/v1","kind":"NetworkPolicy","metadata":{"name":"j"},"spec":{"podSelector":{},"ingress":[{"from":[{"ipBlock":{"cidr":"10.0.0.0/8","except":["10.1.0.0/16"]}}],"ports":[{"port":80,"endPort":90}]}]}}`))
	f.Add([]byte("apiVersion: v1\nkind: List\nitems: [{kind: NetworkPolicy}]\n"))
	f.Add([]byte("&a [*a]"))
	f.Fuzz(func(t *testing.T, data []byte) {
		docs, err := api.DecodePolicies("fuzz.yaml", data)
		if err != nil && docs != nil {
			t.Fatalf("returned %d documents and an error", len(docs))
		}
		if err != nil && err.Error() == "" {
			t.Fatal("empty error message")
		}
	})
}
