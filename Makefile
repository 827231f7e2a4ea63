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

.PHONY: help build test lint vet fmt generate demo bench deps clean

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

generate: ## regenerate generated code (go generate)
	$(GO) generate ./...

test: deps lint ## everything CI runs: lint, the demo's checks, unit, scenario, differential and fuzz-seed tests
	@echo ">> CLI end to end on the examples (make demo, output hidden)"
	@$(MAKE) --no-print-directory demo >/dev/null
	@echo ">> go test (unit, scenario, differential, fuzz seed corpora)"
	$(GO) test -count=1 $(GOTESTFLAGS) ./...

demo: deps build ## check the seed policies offline with meshctl policy check
	@scripts/demo.sh

bench: deps ## run the benchmarks (results: docs/benchmarks.md)
	$(GO) test -run '^$$' -bench . -benchmem ./...

clean:
	rm -rf $(BIN)
