# dpcache developer and CI entry points. `make help` lists the targets.

# Pinned tool versions. Bump here only; `make tools` rebuilds what changed.
BUF_VERSION                ?= v1.75.0
PROTOC_GEN_GO_VERSION      ?= v1.36.12
PROTOC_GEN_GO_GRPC_VERSION ?= v1.6.2
# grpcurl is not used by the build: the e2e tests run it against a DP with
# TLS, as an operator would (e2e/grpcurl_test.go). v1.9.3 builds with our Go.
GRPCURL_VERSION            ?= v1.9.3
# nfpm builds the .deb (make deb); not a module of go.mod.
NFPM_VERSION               ?= v2.48.0

GO           ?= go
# Tools are installed here (`make tools`) and taken from here first, so buf
# finds the pinned protoc-gen-go and protoc-gen-go-grpc plugins.
# `make BIN_DIR=/elsewhere lint` uses tools already built elsewhere.
BIN_DIR      ?= $(if $(GOBIN),$(GOBIN),$(CURDIR)/.bin)
TOOL_PATH    := $(BIN_DIR):$(PATH)
BUF          := PATH="$(TOOL_PATH)" buf
# Recipes print `buf ARGS` rather than the whole PATH.
run-buf       = @echo "buf $(1)" && $(BUF) $(1)

TEST_TIMEOUT ?= 20m
E2E_TIMEOUT  ?= 30m
# Passed to every `go test`, for example TEST_FLAGS='-run TestNginx -v'.
TEST_FLAGS   ?=
# What `make breaking` compares the protos against.
BREAKING_AGAINST ?= .git\#ref=HEAD~1

# Go files that gofmt must accept: all but generated code and local state.
GO_FILES = $(shell find . -path ./.git -prune -o -path ./.bin -prune -o -path ./dpcache-data -prune \
	-o -name '*.go' ! -name '*.pb.go' -print)

.DEFAULT_GOAL := test

.PHONY: help
help: ## list the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

# What `make build` stamps into the binary (`dpcache version`).
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
COMMIT  ?= $(shell git rev-parse --short HEAD 2>/dev/null || echo unknown)
# Where `make build` writes the binary.
OUT     ?= dpcache

.PHONY: build
build: ## build a static ./dpcache (CGO_ENABLED=0, -trimpath), stamped with VERSION and COMMIT
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags "-s -w -X main.version=$(VERSION) -X main.commit=$(COMMIT)" -o $(OUT) ./cmd/dpcache

# `make release`: one static binary per platform in DIST, named
# dpcache_VERSION_OS_ARCH[.exe], and DIST/SHA256SUMS (sha256sum -c checks it).
DIST              ?= dist
RELEASE_PLATFORMS ?= linux/amd64 linux/arm64 windows/amd64
RELEASE_LDFLAGS    = -s -w -X main.version=$(VERSION) -X main.commit=$(COMMIT)

.PHONY: release
release: ## static binaries for linux/amd64, linux/arm64, windows/amd64 in dist/, and dist/SHA256SUMS
	@rm -rf $(DIST) && mkdir -p $(DIST)
	@set -e; for p in $(RELEASE_PLATFORMS); do \
		os=$${p%/*}; arch=$${p#*/}; ext=""; [ "$$os" = windows ] && ext=.exe; \
		out="$(DIST)/dpcache_$(VERSION)_$${os}_$${arch}$$ext"; \
		echo "GOOS=$$os GOARCH=$$arch CGO_ENABLED=0 go build -trimpath -o $$out ./cmd/dpcache"; \
		CGO_ENABLED=0 GOOS=$$os GOARCH=$$arch $(GO) build -trimpath -ldflags "$(RELEASE_LDFLAGS)" -o "$$out" ./cmd/dpcache; \
	done
	cd $(DIST) && sha256sum dpcache_* > SHA256SUMS

# `make deb`: DIST/dpcache_DEB_VERSION_ARCH.deb for each of DEB_ARCHES
# (deploy/nfpm/nfpm.yaml). A Debian version starts with a digit: a tag
# v1.2.0 gives 1.2.0, v1.2.0-3-gabc1234 gives 1.2.0+3+gabc1234, an untagged
# commit 0~gitabc1234.
DEB_ARCHES  ?= amd64 arm64
DEB_VERSION ?= $(shell echo '$(VERSION)' | sed -E '/^v?[0-9]+\./{s/^v//;s/-/+/g;b};s/-/+/g;s/^/0~git/')

.PHONY: need-nfpm
need-nfpm:
	@PATH="$(TOOL_PATH)" command -v nfpm >/dev/null || { \
		echo "nfpm not found in $(BIN_DIR) nor PATH: run 'make tools' (or pass BIN_DIR=dir-with-nfpm)"; exit 1; }

.PHONY: deb
deb: need-nfpm release ## make release, then a .deb per DEB_ARCHES (amd64 arm64) in dist/ with nfpm; SHA256SUMS covers them
	@set -e; for arch in $(DEB_ARCHES); do \
		echo "nfpm package --packager deb (GOARCH=$$arch DEB_VERSION=$(DEB_VERSION))"; \
		sed 's|$${DPCACHE_BINARY}|$(DIST)/dpcache_$(VERSION)_linux_'"$$arch"'|' deploy/nfpm/nfpm.yaml >$(DIST)/.nfpm.yaml; \
		GOARCH=$$arch DEB_VERSION='$(DEB_VERSION)' \
			PATH="$(TOOL_PATH)" nfpm package --config $(DIST)/.nfpm.yaml --packager deb --target $(DIST)/; \
	done; rm -f $(DIST)/.nfpm.yaml
	cd $(DIST) && sha256sum dpcache_* > SHA256SUMS

# As root on Debian: install the .deb of this machine's architecture, check
# it (installed binary, units, config, purge), and purge it.
.PHONY: package-check
package-check: deb ## as root on Debian: make deb, then .ci/package-check (dpkg -i, systemd-analyze verify, dpkg --purge leaves nothing)
	.ci/package-check "$(DIST)/dpcache_$(DEB_VERSION)_$$(dpkg --print-architecture).deb"

# What `make image` builds: the tag, the docker command, and the CA bundle
# copied into the image so that https:// upstreams can be verified.
IMAGE     ?= dpcache:dev
DOCKER    ?= docker
CA_BUNDLE ?= /etc/ssl/certs/ca-certificates.crt

# The build context is a temporary folder: the static binary of `make build`,
# the CA bundle and an empty data/ (the image's /data). No base image is
# pulled (FROM scratch). Docker without BuildKit (no buildx) builds with the
# classic builder.
.PHONY: image
image: ## build the image IMAGE (dpcache:dev) FROM scratch around a static binary (deploy/docker/Dockerfile); no registry needed
	@ctx="$$(mktemp -d)" && trap 'rm -rf "$$ctx"' EXIT && \
	$(MAKE) --no-print-directory build OUT="$$ctx/dpcache" && \
	mkdir "$$ctx/data" && \
	if [ -r "$(CA_BUNDLE)" ]; then cp "$(CA_BUNDLE)" "$$ctx/ca-certificates.crt"; \
	else echo "warning: no $(CA_BUNDLE) (apt-get install ca-certificates): the image trusts no CA, https:// upstreams will fail"; \
		: > "$$ctx/ca-certificates.crt"; fi && \
	echo "$(DOCKER) build --tag $(IMAGE) --file deploy/docker/Dockerfile CONTEXT" && \
	{ $(DOCKER) build --tag "$(IMAGE)" --file deploy/docker/Dockerfile "$$ctx" || { \
		echo "docker build failed; retrying with the classic builder (DOCKER_BUILDKIT=0)"; \
		DOCKER_BUILDKIT=0 $(DOCKER) build --tag "$(IMAGE)" --file deploy/docker/Dockerfile "$$ctx"; }; }

.PHONY: test
test: ## run all tests
	$(GO) test -timeout $(TEST_TIMEOUT) $(TEST_FLAGS) ./...

.PHONY: race
race: ## run all tests with the race detector
	$(GO) test -race -timeout $(TEST_TIMEOUT) $(TEST_FLAGS) ./...

# The exact test command of the README and of .ci/run.
.PHONY: ci-test
ci-test: ## the CI test run: go test -race -p 1 -timeout 20m ./...
	$(GO) test -race -p 1 -timeout 20m ./...

# The README's second command: everything from a fresh Debian machine.
.PHONY: check
check: ## as root on Debian: install what is missing (.ci/deps), then lint, checkgenerate, tidy-check, ci-test
	.ci/deps
	$(MAKE) --no-print-directory lint checkgenerate tidy-check ci-test

.PHONY: e2e
e2e: ## run the end-to-end tests (real processes, nginx)
	$(GO) test -timeout $(E2E_TIMEOUT) $(TEST_FLAGS) ./e2e/...

.PHONY: bench
bench: ## run every benchmark once (each prints its ratio to a baseline)
	$(GO) test -run '^$$' -bench . -benchtime 1x -timeout $(TEST_TIMEOUT) $(TEST_FLAGS) ./...

# The size of `make loadtest`'s run.
LOADTEST_ENDPOINTS    ?= 1000
LOADTEST_CONCURRENCY  ?= 500

.PHONY: loadtest
loadtest: ## a DP of this machine under dpcache loadtest: LOADTEST_ENDPOINTS (1000) endpoints, LOADTEST_CONCURRENCY (500) at once, 5 MiB changed
	$(GO) test -run '^$$' -bench '^BenchmarkLoadtest$$' -benchtime 1x -v -timeout $(TEST_TIMEOUT) $(TEST_FLAGS) ./e2e/bench/ \
		-args -loadtest.endpoints=$(LOADTEST_ENDPOINTS) -loadtest.concurrency=$(LOADTEST_CONCURRENCY)

# How long `make fuzz` runs each fuzz target.
FUZZTIME ?= 30s

.PHONY: fuzz
fuzz: ## run every fuzz target for FUZZTIME (default 30s) each; plain `go test` runs their seed corpora
	@set -e; for pkg in $$($(GO) list ./...); do \
		for target in $$($(GO) test -list '^Fuzz' $$pkg | grep '^Fuzz' || true); do \
			echo "== $$pkg $$target ($(FUZZTIME))"; \
			$(GO) test -run '^$$' -fuzz "^$$target$$" -fuzztime $(FUZZTIME) $$pkg; \
		done; \
	done

# buf must come from BIN_DIR or PATH; say how to get it rather than fail obscurely.
.PHONY: need-buf
need-buf:
	@PATH="$(TOOL_PATH)" command -v buf >/dev/null || { \
		echo "buf not found in $(BIN_DIR) nor PATH: run 'make tools' (or pass BIN_DIR=dir-with-buf)"; exit 1; }

.PHONY: lint
lint: need-buf ## gofmt check, go vet, buf lint
	@echo "gofmt -l (generated *.pb.go excluded)"
	@out="$$(gofmt -l $(GO_FILES) </dev/null)"; if [ -n "$$out" ]; then \
		echo "these files need gofmt -w:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(call run-buf,lint)

.PHONY: breaking
breaking: need-buf ## buf breaking against BREAKING_AGAINST (default: the previous commit)
	$(call run-buf,breaking --against '$(BREAKING_AGAINST)')

.PHONY: generate
generate: need-buf ## regenerate the Go code of proto/ with buf
	$(call run-buf,generate)

.PHONY: checkgenerate
checkgenerate: generate ## fail if the committed generated code is stale
	@git diff --exit-code -- proto/ || { \
		echo "proto/: generated code is stale: run 'make generate' and commit the result"; exit 1; }
	@untracked="$$(git ls-files --others --exclude-standard -- proto/)"; if [ -n "$$untracked" ]; then \
		echo "proto/: generated files not committed:"; echo "$$untracked"; exit 1; fi

.PHONY: tidy-check
tidy-check: ## fail if go mod tidy would change go.mod or go.sum
	@$(GO) mod tidy -diff || { \
		echo "go.mod/go.sum are not tidy: run 'go mod tidy' and commit the result"; exit 1; }

# Each tool is rebuilt when its pinned version changes: a stamp file records
# the version that is installed.
.PHONY: tools
tools: ## install the pinned buf, protoc plugins, grpcurl and nfpm into BIN_DIR
tools: $(BIN_DIR)/.buf-$(BUF_VERSION) \
	$(BIN_DIR)/.protoc-gen-go-$(PROTOC_GEN_GO_VERSION) \
	$(BIN_DIR)/.protoc-gen-go-grpc-$(PROTOC_GEN_GO_GRPC_VERSION) \
	$(BIN_DIR)/.grpcurl-$(GRPCURL_VERSION) \
	$(BIN_DIR)/.nfpm-$(NFPM_VERSION)

$(BIN_DIR)/.buf-$(BUF_VERSION):
	GOBIN="$(BIN_DIR)" $(GO) install github.com/bufbuild/buf/cmd/buf@$(BUF_VERSION)
	@rm -f $(BIN_DIR)/.buf-* && touch $@

$(BIN_DIR)/.protoc-gen-go-$(PROTOC_GEN_GO_VERSION):
	GOBIN="$(BIN_DIR)" $(GO) install google.golang.org/protobuf/cmd/protoc-gen-go@$(PROTOC_GEN_GO_VERSION)
	@rm -f $(BIN_DIR)/.protoc-gen-go-v* && touch $@

$(BIN_DIR)/.protoc-gen-go-grpc-$(PROTOC_GEN_GO_GRPC_VERSION):
	GOBIN="$(BIN_DIR)" $(GO) install google.golang.org/grpc/cmd/protoc-gen-go-grpc@$(PROTOC_GEN_GO_GRPC_VERSION)
	@rm -f $(BIN_DIR)/.protoc-gen-go-grpc-* && touch $@

$(BIN_DIR)/.grpcurl-$(GRPCURL_VERSION):
	GOBIN="$(BIN_DIR)" $(GO) install github.com/fullstorydev/grpcurl/cmd/grpcurl@$(GRPCURL_VERSION)
	@rm -f $(BIN_DIR)/.grpcurl-* && touch $@

$(BIN_DIR)/.nfpm-$(NFPM_VERSION):
	GOBIN="$(BIN_DIR)" $(GO) install github.com/goreleaser/nfpm/v2/cmd/nfpm@$(NFPM_VERSION)
	@rm -f $(BIN_DIR)/.nfpm-* && touch $@

.PHONY: clean
clean: ## remove the installed tools, test binaries and dist/
	rm -rf .bin $(DIST)
	find . -name '*.test' -type f -delete
