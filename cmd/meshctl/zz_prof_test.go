package main

import (
	"io"
	"os"
	"testing"
	"time"

	"github.com/nodemesh/nodemesh/api"
)

func TestZZProf(t *testing.T) {
	if os.Getenv("PROF") == "" {
		t.Skip()
	}
	s := time.Now()
	w, err := api.LoadWorld("/tmp/bg/world.yaml")
	t.Log("world", time.Since(s), err, len(w.Pods))
	s = time.Now()
	d, err := api.LoadPolicies("/tmp/bg/policies")
	t.Log("policies", time.Since(s), err, len(d))
	s = time.Now()
	code := run([]string{"policy", "check", "--world", "/tmp/bg/world.yaml", "--policy", "/tmp/bg/policies", "--flows", os.Getenv("PROF"), "-o", "jsonl", "--reference"}, nil, io.Discard, os.Stderr)
	t.Log("run", time.Since(s), code)
}
