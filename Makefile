# ferry — build, test and lint every module of the go.work workspace.
#
#   make build        every module; binaries (static, CGO_ENABLED=0) into ./bin
#   make run          ferry dev --demo: everything in one process
#   make test         installs the test dependencies, then go test -race in every module
#   make lint         gofmt, go vet and staticcheck in every module
#   make bench        orchestrator benchmarks, then ferry against OpenSSH (scp, sftp, tar | ssh,
#                     and the db and log backup jobs against ssh -L + pg_dump, ssh tar | zstd + scp)
#   make schemas      regenerates contracts/schema from the Go types
#   make natsconf     regenerates deployments/nats/ (NATS users, permissions, configs) from pkg/bus/natsconf
#   make certs        test CA, NATS server certificate and NATS passwords in deployments/tls/ (kept if present)
#   make fuzz         fuzzes the job request decoder for $(FUZZTIME)
#   make gowork-off   builds every module on its own go.mod (as a container build does)
#   make images       every image of the compose stack, offline (no registry): the base
#                     (debootstrap, once), static linux/amd64 binaries in bin/linux-amd64,
#                     then ferry/{orchestrator,connector,transfer,archiver,cleanup,nats,
#                     operator-pc,customer,prometheus}:$(IMAGE_TAG); `make images-smoke` checks them
#   make e2e          images, then the compose stack with its e2e targets: the three actions
#                     through the CLI from this machine, results checked on the targets; then
#                     every dashboard panel's and alert rule's PromQL against its Prometheus
#   make observability  promtool check/test of the alert rules, dashboards' PromQL parsed
#                     (part of make test; needs promtool: scripts/test-deps.sh)
#   make chaos        images, then the stack under faults: each service killed mid-step per
#                     action, the customer's network cut, the whole stack restarted, a NATS
#                     node of three killed during 50 jobs
#   make bench-stack  jobs/min and p50/p95 job latency of the stack, 100 jobs at once: one
#                     NATS node (fsync always vs default) and three nodes
#   make up / down    the compose stack for a person (certs and images first)
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

.PHONY: all build run test test-deps lint bench schemas fuzz gowork-off clean \
	images images-base images-bin images-nats-check images-smoke

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
	  ( cd $$m && go vet -tags e2e ./... && go run $(STATICCHECK) -tags e2e ./... ) || exit 1; \
	done

# The OpenSSH comparison needs root (it runs real sshds for the test user, and a
# PostgreSQL server as the postgres user) and ~9 min on 2 cores.
bench: test-deps
	cd services/orchestrator && go test -run XXX -bench . ./...
	cd cmd/ferry && FERRY_TEST_REQUIRE=1 go test -run '^$$' -bench OpenSSH -benchtime 1x -timeout 45m .

schemas:
	cd contracts && go test -run Schemas -update .

observability: test-deps
	cd deployments/e2e && FERRY_TEST_REQUIRE=1 go test -count=1 -v -run TestObservabilityFiles .

.PHONY: natsconf certs e2e chaos bench-stack up down observability

natsconf:
	cd pkg && go test -run FilesUpToDate ./bus/natsconf -update

certs:
	@scripts/certs.sh

fuzz:
	cd contracts && go test -run XXX -fuzz FuzzDecodeJobRequest -fuzztime $(FUZZTIME) .

gowork-off:
	@for m in $(MODULES); do \
	  echo "GOWORK=off build $$m"; \
	  ( cd $$m && GOWORK=off go build ./... ) || exit 1; \
	done

# --- images -------------------------------------------------------------------------
# Built without a registry: deployments/images/base/build.sh debootstraps ferry/base
# (FORCE=1 rebuilds it); every other image is an ordinary Dockerfile FROM $(BASE_IMAGE),
# built by deployments/images/build.sh from a context holding only what it copies.
IMAGE_TAG    ?= $(or $(FERRY_TAG),dev)
BASE_IMAGE   ?= ferry/base:bookworm
SERVICES     := orchestrator connector transfer archiver cleanup
IMAGE_BIN    := $(BIN)/linux-amd64
IMAGE_CTX    := $(BIN)/images
STATIC_BUILD := CGO_ENABLED=0 GOOS=linux GOARCH=amd64 go build -trimpath
NATS_MODULE  := github.com/nats-io/nats-server/v2

images: images-base images-bin
	@IMAGE_TAG=$(IMAGE_TAG) BASE_IMAGE=$(BASE_IMAGE) BIN_DIR=$(IMAGE_BIN) CTX_DIR=$(IMAGE_CTX) \
	  deployments/images/build.sh
	@docker images --format '{{.Repository}}:{{.Tag}}\t{{.Size}}' 'ferry/*' | sort

images-base:
	@BASE_IMAGE=$(BASE_IMAGE) deployments/images/base/build.sh

# The services and the ferry CLI, static; nats-server from source at the version
# pkg/go.mod requires (GOWORK=off: exactly that version, not the workspace's choice).
images-bin:
	@mkdir -p $(IMAGE_BIN)
	@echo "go build $(SERVICES) ferry -> $(IMAGE_BIN)"
	@$(STATIC_BUILD) -ldflags '$(LDFLAGS)' -o $(IMAGE_BIN)/ \
	  $(foreach s,$(SERVICES),./services/$(s)/cmd/$(s)) ./cmd/ferry
	@echo "go build $(NATS_MODULE) -> $(IMAGE_BIN)/nats-server"
	@cd pkg && GOWORK=off $(STATIC_BUILD) -ldflags '-s -w' -o $(IMAGE_BIN)/nats-server $(NATS_MODULE)
	@$(MAKE) --no-print-directory images-nats-check

images-nats-check:
	@want=$$(cd pkg && GOWORK=off go list -m -f '{{.Version}}' $(NATS_MODULE)); \
	got=$$($(IMAGE_BIN)/nats-server --version); \
	if [ "$$got" != "nats-server: $$want" ]; then \
	  echo "$(IMAGE_BIN)/nats-server is '$$got', pkg/go.mod requires $$want"; exit 1; fi; \
	echo "$$got (= pkg/go.mod)"

images-smoke:
	@IMAGE_TAG=$(IMAGE_TAG) scripts/images-smoke.sh

# --- the compose stack ----------------------------------------------------------------
# The e2e and chaos suites start their own project (ferry-e2e) on other host ports and
# remove it afterwards (FERRY_E2E_KEEP=1 keeps it). They need the Docker engine and root
# (secrets are handed to the containers' users).
E2E_TEST := cd deployments/e2e && go test -tags e2e -count=1 -v -timeout 60m

e2e: images
	$(E2E_TEST) -run 'TestActions|TestObservability' .

chaos: images
	$(E2E_TEST) -run 'TestChaos' .

# Jobs/min and job latency of the stack with 100 small update jobs at once: one NATS node
# (fsync before every ack, and NATS's default) and the three-node cluster.
bench-stack: images
	cd deployments/e2e && go test -tags e2e -count=1 -run '^$$' -bench Stack -benchtime 1x -timeout 60m .

up: images
	@NATS_UID=10002 SERVICE_UID=10001 scripts/certs.sh
	@mkdir -p deployments/secrets && chown 10001:10001 deployments/secrets && chmod 0700 deployments/secrets
	docker-compose up -d

down:
	docker-compose down

clean:
	rm -rf $(BIN)
	go clean -testcache
