# Every target creates or reuses the virtualenv itself: on a fresh clone `make demo` and
# `make test` are all the set-up there is.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
NODE_STAMP := node_modules/.installed
# protos/google/ is a vendored copy of googleapis' annotations (for google.api.http): it is an
# include only; its Python code is the installed googleapis-common-protos package
PROTO_FILES := $(shell find protos -path protos/google -prune -o -name '*.proto' -print | sort)

.PHONY: venv demo test lint proto proto-check bench clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check --upgrade pip
	$(PY) -m pip install -q --disable-pip-version-check -e '.[dev]'
	@touch $(STAMP)

$(NODE_STAMP): package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	@touch $(NODE_STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(PY) clients/demo.py

# The suite in TEST_WORKERS processes (pytest-xdist; most of its time is spent waiting on servers
# and subprocesses, so more processes than cores help), then the tests marked serial alone:
# they stop the machine's PostgreSQL, which every other process is using.
# Bytecode is written during the run even where PYTHONDONTWRITEBYTECODE is set (CI machines set
# it): the suite starts ~250 CLI and server subprocesses, and each would compile the service's
# modules again (~0.2 CPU-s each), as each pytest process would re-rewrite every test module.
TEST_WORKERS ?= 4
TEST_ENV := env -u PYTHONDONTWRITEBYTECODE
test: $(STAMP)
	$(TEST_ENV) $(PY) -m pytest -q -n $(TEST_WORKERS) -m "not serial"
	$(TEST_ENV) $(PY) -m pytest -q -m serial

# Generated code is committed; `make proto` rewrites it, `make lint` fails if it has drifted.
proto: $(STAMP)
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(PY) -m grpc_tools.protoc -Iprotos \
	  --python_out=. --grpc_python_out=. --mypy_out=. --mypy_grpc_out=. $(PROTO_FILES)
	@# option-only files define no service; drop their empty service modules
	rm -f authsvc/v1/options_pb2_grpc.py authsvc/v1/options_pb2_grpc.pyi

proto-check: $(STAMP)
	@tmp=$$(mktemp -d) && trap 'rm -rf $$tmp' EXIT && \
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(PY) -m grpc_tools.protoc -Iprotos \
	  --python_out=$$tmp --grpc_python_out=$$tmp --mypy_out=$$tmp --mypy_grpc_out=$$tmp $(PROTO_FILES) >/dev/null && \
	rm -f $$tmp/authsvc/v1/options_pb2_grpc.py $$tmp/authsvc/v1/options_pb2_grpc.pyi && \
	for f in $$(cd $$tmp && find . -type f | sort); do \
	  cmp -s "$$tmp/$$f" "$$f" || { echo "generated code is stale: $$f (run make proto)"; exit 1; }; \
	done && echo "generated code matches protos/"

lint: $(STAMP) $(NODE_STAMP) proto-check
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy authsvc payments_svc clients tests
	node_modules/.bin/buf lint
	node_modules/.bin/buf format --diff --exit-code
	@# the public contract: no breaking change against main (BUF_BREAKING_AGAINST overrides, e.g.
	@# '.git#tag=v1.0.0'); a clone without a local main (another branch, detached) uses origin/main
	node_modules/.bin/buf breaking --against "$${BUF_BREAKING_AGAINST:-$$(git rev-parse -q --verify \
	  refs/heads/main >/dev/null && echo '.git#branch=main' || echo '.git#ref=origin/main')}"

bench: $(STAMP)
	$(PY) tests/bench/bench_http_token.py
	$(PY) tests/bench/bench_issue_token.py
	$(PY) tests/bench/bench_interceptor.py --callgrind
	$(PY) tests/bench/bench_cold_cache.py
	$(PY) tests/bench/bench_metrics.py
	$(PY) tests/bench/bench_store.py
	$(PY) tests/bench/bench_scale.py
	$(PY) tests/bench/bench_client_auth.py

clean:
	rm -rf $(VENV) node_modules .pytest_cache .mypy_cache .ruff_cache
