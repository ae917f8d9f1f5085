# Developer entry points of las-worker. `make help` lists them.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := build

CARGO ?= cargo

.PHONY: help build run demo test test-cluster lint schema fmt bench clean-demo

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{ printf "  make %-12s %s\n", $$1, $$2 }'

build: ## Build every crate of the workspace
	$(CARGO) build --workspace

run: build ## Run the worker against local RabbitMQ/PostgreSQL (env: AMQP_URL, DATABASE_URL, ...)
	LOG_FORMAT=pretty ./target/debug/las-worker run

demo: ## End-to-end demo in its own database and vhost; sets up what it needs where it can (scripts/demo.sh)
	bash scripts/check-services.sh
	bash scripts/ensure-test-tools.sh --demo
	bash scripts/demo.sh

test: ## Set up services and tools where it can, then build and run every test
	bash scripts/test-check-services.sh
	bash scripts/check-services.sh
	bash scripts/ensure-test-tools.sh
	$(CARGO) build --workspace --all-targets
	$(CARGO) test --workspace --all-targets --no-fail-fast

test-cluster: ## Only the cluster fault tests: a three-node RabbitMQ on this machine, five faults and a baseline (~8 min; make test runs them too)
	bash scripts/check-services.sh
	$(CARGO) test -p las-e2e --test cluster

lint: ## Layer check (scripts/check-layers.sh), rustfmt check and clippy with warnings as errors
	bash scripts/check-layers.sh
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

schema: ## Regenerate contracts/schema/*.json from the Rust types
	$(CARGO) run -q -p las-contracts --bin gen-schema

fmt: ## Format all code
	$(CARGO) fmt --all

bench: ## Throughput/latency/RSS benchmark, last stdout line JSON (env: BENCH_MESSAGES, BENCH_SCALE=1m; docs/performance.md)
	bash scripts/check-services.sh
	$(CARGO) build --release -p las-worker -p las-e2e --bin las-worker --bin bench
	bin="$${CARGO_TARGET_DIR:-target}/release/bench"; trap '"$$bin" --cleanup' EXIT INT TERM; "$$bin"

clean-demo: ## Stop a leftover demo worker, drop the demo database and vhost, remove .demo/
	bash scripts/demo.sh --clean

.PHONY: dashboard
dashboard: ## Regenerate deploy/grafana/las-worker.json from deploy/grafana/dashboard.py (never edit the JSON)
	bash deploy/grafana/generate.sh

.PHONY: deploy-check
deploy-check: ## Validate deploy/ (kustomize, schemas, promtool, yamllint, compose) and the AsyncAPI contract
	bash scripts/deploy-check.sh
