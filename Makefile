# blockferry: make setup | build | test | bench | demo
#
# libnbd's Go bindings come from Debian's source package, served as a file:// Go
# module proxy that setup-deps.sh builds under .cache/goproxy (see README.md).

SHELL := /bin/bash
GO ?= go
PROXY_DIR := $(CURDIR)/.cache/goproxy
export GOPROXY := file://$(PROXY_DIR),$(shell $(GO) env GOPROXY | sed 's|file://[^,]*,||g')
export GONOSUMDB := libguestfs.org
export GOFLAGS := -mod=readonly
export PATH := $(CURDIR)/.cache/bin:$(PATH)

.PHONY: setup setup-build deps build test test-short vet bench bench-quick demo clean

setup:
	bash deploy/scripts/setup-deps.sh

setup-build:
	bash deploy/scripts/setup-deps.sh --build-only

# Module downloads only: a layer of its own in the Dockerfile.
deps: setup-build
	$(GO) mod download

build: setup-build
	$(GO) build -trimpath -o bin/blockferry ./cmd/blockferry

vet:
	@unformatted=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$unformatted" ]; then echo "not gofmt-formatted: $$unformatted"; exit 1; fi
	$(GO) vet ./...

# Everything: unit and integration tests against real qemu-nbd, nbdkit, versitygw
# and nats-server, which setup installs and the tests start on loopback.
test: setup vet
	$(GO) test -count=1 -timeout 40m ./...

test-short: setup-build
	$(GO) test -short -count=1 ./...

bench: setup build
	bash deploy/scripts/bench.sh
	bash deploy/scripts/bench-serve.sh
	bash deploy/scripts/bench-gc.sh

bench-quick: setup build
	BENCH_QUICK=1 bash deploy/scripts/bench.sh
	BENCH_QUICK=1 bash deploy/scripts/bench-serve.sh

demo: setup build
	bash deploy/scripts/demo.sh

clean:
	rm -rf bin
