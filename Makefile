# Nodemesh build, test and demo. `make help` lists the targets.
#
# Every target installs what it needs: Debian packages through
# scripts/deps.sh (apt-get, only when missing), Go modules through the Go
# module proxy.

GO        ?= go
BIN       := bin
VERSION   ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS   := -X main.version=$(VERSION)
GOTESTFLAGS ?=

.PHONY: help build test e2e lint vet fmt generate check-generated demo bench bench-proxy deps clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | expand -t 12

deps: ## install the Debian packages the build and tests need (as root)
	@scripts/deps.sh

build: ## build every binary into bin/
	@echo ">> building binaries into $(BIN)/"
	@mkdir -p $(BIN)
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN)/ ./cmd/...

lint: fmt vet ## gofmt and go vet

fmt:
	@echo ">> checking gofmt"
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi

vet:
	@echo ">> go vet"
	$(GO) vet ./...

# The BPF objects: bpf2go compiles each bpf/<name>.c, from the go:generate
# line next to the Go that loads it, into bpf/<name>_bpfel.{go,o}:
# datapath.c (datapath.go), splice.c (splice.go).
generate: deps ## regenerate generated code: the BPF objects (bpf2go, Debian clang)
	$(GO) generate ./...

check-generated: deps ## fail if the committed BPF objects do not match their sources
	@echo ">> checking that bpf/*_bpfel.{go,o} match bpf/*.c (go generate ./bpf/: datapath, splice)"
	@$(GO) generate ./bpf/
	@git diff --exit-code --stat -- bpf/ || { echo "bpf/: committed objects differ from the sources: run 'make generate' and commit"; exit 1; }
	@new=$$(git ls-files --others --exclude-standard -- 'bpf/*_bpfel.go' 'bpf/*_bpfel.o'); \
	if [ -n "$$new" ]; then echo "bpf/: generated objects not committed:" $$new; exit 1; fi

test: deps lint check-generated ## everything CI runs: lint, generated objects, the demo's checks, unit, BPF, scenario, differential and virtual-cluster tests
	@echo ">> CLI end to end on the examples (make demo, output hidden)"
	@$(MAKE) --no-print-directory demo >/dev/null
	@echo ">> go test: unit, scenario, differential, fuzz seed corpora, BPF (root) and the virtual cluster (root)"
	$(GO) test -count=1 -timeout 30m $(GOTESTFLAGS) ./...

e2e: deps ## the virtual-cluster tests only (root): agents enforcing policy on real traffic
	$(GO) test -count=1 -timeout 20m ./tests/...

demo: deps build ## check the seed policies offline with meshctl policy check
	@scripts/demo.sh

bench: deps ## run the benchmarks (results: docs/benchmarks.md), then bench-proxy
	$(GO) test -run '^$$' -bench . -benchmem $$($(GO) list ./... | grep -v '/tests/l7bench$$')
	@$(MAKE) --no-print-directory bench-proxy

bench-proxy: deps ## nodemesh-proxy vs HAProxy through TPROXY in network namespaces (root; ~7 min; NODEMESH_BENCH_RESULTS=file records)
	@echo ">> tests/l7bench: compiling, then about 7 minutes of measurements (progress below)"
	$(GO) test -count=1 -run '^$$' -bench L7Proxy -benchtime 1x -timeout 30m ./tests/l7bench/

clean:
	rm -rf $(BIN)
