# Wrenn's build. The two commands a new user needs: `make dev` and `make test`.
SHELL := /bin/bash
.DEFAULT_GOAL := help

GO            ?= go
MODULE        := github.com/wrenn-dev/wrenn
VERSION       ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS       := -s -w -X $(MODULE)/internal/buildinfo.Version=$(VERSION)
BIN           := $(CURDIR)/bin
export PATH   := $(BIN):$(PATH)
# Where images, templates and sandboxes live (shared by dev and tests).
export WRENN_DIR ?= /var/lib/wrenn

# Pinned code generators and linters, installed into ./bin by `make tools`.
PROTOC_GEN_GO_VERSION         := v1.36.12
PROTOC_GEN_CONNECT_GO_VERSION := v1.19.1
SQLC_VERSION                  := v1.30.0
OAPI_CODEGEN_VERSION          := v2.8.2
STATICCHECK_VERSION           := v0.8.2

PROTO_FILES := proto/envd/process/process.proto proto/envd/filesystem/filesystem.proto proto/hostagent/v1/hostagent.proto proto/hostagent/v1/errors.proto
SWAGGER_DIST := internal/controlplane/api/swaggerui/dist
DASHBOARD_DIST := internal/controlplane/dashboard/dist
# What the dashboard's build reads (not what it generates into src/lib/api).
DASHBOARD_SRC := $(shell find web/src web/static -type f ! -name openapi.yaml ! -name schema.d.ts 2>/dev/null) \
	web/svelte.config.js web/vite.config.ts web/tsconfig.json $(wildcard internal/controlplane/api/openapi/*.yaml)

.PHONY: help setup tools web build images generate sdk-gen check-generated lint test test-go test-web bench dev clean

help:
	@echo "make dev     - install what is missing, build, run the whole platform locally"
	@echo "make test    - install what is missing, build, run every test"
	@echo "make build   - build bin/wrenn and bin/envd"
	@echo "make images  - build the VM kernel and root filesystem into WRENN_DIR ($(WRENN_DIR))"
	@echo "make generate, make lint (gofmt, go mod tidy, vet, staticcheck), make bench"

setup:
	@bash scripts/setup.sh

tools: $(BIN)/protoc-gen-go $(BIN)/protoc-gen-connect-go $(BIN)/sqlc $(BIN)/staticcheck $(BIN)/oapi-codegen

$(BIN)/protoc-gen-go: Makefile
	GOBIN=$(BIN) $(GO) install google.golang.org/protobuf/cmd/protoc-gen-go@$(PROTOC_GEN_GO_VERSION)
	@touch $@
$(BIN)/protoc-gen-connect-go: Makefile
	GOBIN=$(BIN) $(GO) install connectrpc.com/connect/cmd/protoc-gen-connect-go@$(PROTOC_GEN_CONNECT_GO_VERSION)
	@touch $@
$(BIN)/sqlc: Makefile
	GOBIN=$(BIN) $(GO) install github.com/sqlc-dev/sqlc/cmd/sqlc@$(SQLC_VERSION)
	@touch $@
$(BIN)/oapi-codegen: Makefile
	GOBIN=$(BIN) $(GO) install github.com/oapi-codegen/oapi-codegen/v2/cmd/oapi-codegen@$(OAPI_CODEGEN_VERSION)
	@touch $@
$(BIN)/staticcheck: Makefile
	GOBIN=$(BIN) $(GO) install honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION)
	@touch $@

# Front-end assets come from the npm registry at pinned versions (the
# lockfile; npm's cache makes repeat installs offline) and are embedded
# into the binary; nothing is fetched at run time.
web: $(SWAGGER_DIST)/swagger-ui-bundle.js $(DASHBOARD_DIST)/index.html

web/node_modules/.package-lock.json: web/package.json web/package-lock.json
	cd web && npm ci --prefer-offline --no-audit --no-fund --loglevel=error
	@touch $@

# The dashboard: its typed API client is generated from the control
# plane's OpenAPI document, type-checked (svelte-check) and built.
$(DASHBOARD_DIST)/index.html: web/node_modules/.package-lock.json $(DASHBOARD_SRC)
	$(GO) run ./internal/controlplane/api/specdump > web/src/lib/api/openapi.yaml
	cd web && npm run --silent gen:api && npm run --silent build
	find $(DASHBOARD_DIST) -mindepth 1 ! -name .gitkeep -delete
	cp -R web/build/. $(DASHBOARD_DIST)/

$(SWAGGER_DIST)/swagger-ui-bundle.js: web/node_modules/.package-lock.json
	cp web/node_modules/swagger-ui-dist/swagger-ui-bundle.js web/node_modules/swagger-ui-dist/swagger-ui.css \
	   web/node_modules/swagger-ui-dist/favicon-32x32.png $(SWAGGER_DIST)/
	@touch $@

build: web
	$(GO) build -ldflags '$(LDFLAGS)' -o $(BIN)/wrenn ./cmd/wrenn
	CGO_ENABLED=0 $(GO) build -ldflags '$(LDFLAGS)' -o $(BIN)/envd ./cmd/envd

# Kernel and the minimal root filesystem; cached, so a no-op when current.
images: build
	$(BIN)/wrenn images build --envd $(BIN)/envd

generate: tools
	protoc -I proto -I /usr/include \
	  --go_out=. --go_opt=module=$(MODULE) \
	  --connect-go_out=. --connect-go_opt=module=$(MODULE) $(PROTO_FILES)
	sqlc generate
	$(MAKE) --no-print-directory sdk-gen SDK_GEN_OUT=$(SDK_GEN)

# The Go SDK's models and raw client, from the merged OpenAPI document.
SDK_GEN := sdk/go/wrenn/wrennapi/wrennapi.gen.go
SDK_GEN_OUT ?= $(SDK_GEN)
sdk-gen:
	@spec=$$(mktemp --suffix=.yaml); trap 'rm -f $$spec' EXIT; \
	$(GO) run ./internal/controlplane/api/specdump > $$spec && \
	oapi-codegen -config sdk/go/wrenn/wrennapi/oapi-codegen.yaml -o $(SDK_GEN_OUT) $$spec

# Fails when committed generated code differs from what the generators make.
check-generated: tools
	@tmp=$$(mktemp -d); trap 'rm -rf $$tmp' EXIT; \
	protoc -I proto -I /usr/include \
	  --go_out=$$tmp --go_opt=module=$(MODULE) \
	  --connect-go_out=$$tmp --connect-go_opt=module=$(MODULE) $(PROTO_FILES); \
	if ! diff -r -q $$tmp/proto proto -x '*.proto' >/dev/null; then \
	  diff -r $$tmp/proto proto -x '*.proto' | head -40; \
	  echo "generated protobuf code is stale: run 'make generate' and commit"; exit 1; fi; \
	if ! sqlc diff >/dev/null 2>&1; then sqlc diff | head -40; \
	  echo "generated sqlc code is stale: run 'make generate' and commit"; exit 1; fi; \
	$(MAKE) --no-print-directory sdk-gen SDK_GEN_OUT=$$tmp/sdk.gen.go; \
	if ! cmp -s $$tmp/sdk.gen.go $(SDK_GEN); then diff $$tmp/sdk.gen.go $(SDK_GEN) | head -40; \
	  echo "the Go SDK's generated code is stale: run 'make generate' and commit"; exit 1; fi; \
	echo "generated code is current"

lint: tools
	@out=$$(gofmt -l cmd internal db proto sdk e2e); if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi
	@$(GO) mod tidy -diff >/dev/null || { $(GO) mod tidy -diff; echo "go.mod/go.sum are not tidy: run 'go mod tidy' and commit"; exit 1; }
	$(GO) vet ./...
	staticcheck ./...

# Everything: set-up, build, images, generated-code check, lint, all tests.
test: setup tools build images check-generated lint test-web test-go

# The dashboard's unit tests (stores, formatting); its browser tests run
# in the Go tests (e2e), against a real control plane and agent.
test-web: web
	cd web && npm test --silent

test-go:
	$(GO) test -count=1 -timeout 20m ./...

bench: setup build images
	bash scripts/bench.sh

dev: setup build images
	$(BIN)/wrenn dev

clean:
	rm -rf $(BIN) web/node_modules
	find $(SWAGGER_DIST) -type f ! -name .gitkeep -delete
	find $(DASHBOARD_DIST) -mindepth 1 ! -name .gitkeep -delete
	rm -rf web/build web/.svelte-kit
