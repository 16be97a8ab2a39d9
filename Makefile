# ferry — build, test and lint every module of the go.work workspace.
#
#   make build        every module; binaries (static, CGO_ENABLED=0) into ./bin
#   make run          ferry dev --demo: everything in one process
#   make test         installs the test dependencies, then go test -race in every module
#   make lint         gofmt, go vet and staticcheck in every module
#   make bench        orchestrator benchmarks, then ferry against OpenSSH (scp, sftp, tar | ssh,
#                     and the db and log backup jobs against ssh -L + pg_dump, ssh tar | zstd + scp)
#   make schemas      regenerates contracts/schema from the Go types
#   make fuzz         fuzzes the job request decoder for $(FUZZTIME)
#   make gowork-off   builds every module on its own go.mod (as a container build does)
#   make clean

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c

# The modules, in go.work order, relative to this directory.
MODULES := $(patsubst $(CURDIR)/%,%,$(shell go list -m -f '{{.Dir}}'))

BIN         := $(CURDIR)/bin
VERSION     ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo devel)
LDFLAGS     := -s -w -X github.com/ferrydesk/ferry/pkg/telemetry.Version=$(VERSION)
STATICCHECK := honnef.co/go/tools/cmd/staticcheck@v0.8.2
FUZZTIME    ?= 30s

.PHONY: all build run test test-deps lint bench schemas fuzz gowork-off clean

all: lint test build

build:
	@mkdir -p $(BIN)
	@for m in $(MODULES); do \
	  echo "build $$m"; \
	  ( cd $$m && go build ./... && \
	    mains=$$(go list -f '{{if eq .Name "main"}}{{.ImportPath}}{{end}}' ./...) && \
	    if [ -n "$$mains" ]; then CGO_ENABLED=0 go build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/ $$mains; fi \
	  ) || exit 1; \
	done
	@ls $(BIN)

run:
	cd cmd/ferry && go run . dev --demo

test-deps:
	@scripts/test-deps.sh

test: test-deps
	@for m in $(MODULES); do \
	  echo "test $$m"; \
	  ( cd $$m && FERRY_TEST_REQUIRE=1 go test -race -count=1 ./... ) || exit 1; \
	done

lint:
	@unformatted=$$(gofmt -l $(MODULES)); \
	if [ -n "$$unformatted" ]; then echo "gofmt needed:"; echo "$$unformatted"; exit 1; fi
	@for m in $(MODULES); do \
	  echo "vet + staticcheck $$m"; \
	  ( cd $$m && go vet ./... && go run $(STATICCHECK) ./... ) || exit 1; \
	done

# The OpenSSH comparison needs root (it runs real sshds for the test user, and a
# PostgreSQL server as the postgres user) and ~9 min on 2 cores.
bench: test-deps
	cd services/orchestrator && go test -run XXX -bench . ./...
	cd cmd/ferry && FERRY_TEST_REQUIRE=1 go test -run '^$$' -bench OpenSSH -benchtime 1x -timeout 20m .

schemas:
	cd contracts && go test -run Schemas -update .

fuzz:
	cd contracts && go test -run XXX -fuzz FuzzDecodeJobRequest -fuzztime $(FUZZTIME) .

gowork-off:
	@for m in $(MODULES); do \
	  echo "GOWORK=off build $$m"; \
	  ( cd $$m && GOWORK=off go build ./... ) || exit 1; \
	done

clean:
	rm -rf $(BIN)
	go clean -testcache
