# The two commands: `make demo` (local control plane + operator + sample) and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
VENV_STAMP := $(VENV)/.installed-$(shell cat requirements.lock pyproject.toml | sha1sum | cut -c1-12)
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: help venv tools cluster-up cluster-down demo demo-down test test-unit test-e2e kind-up kind-down crds lock lint bench bench-routing bench-gateway

help:
	@echo "make demo     start the local control plane, the operator and examples/qwen3-0.6b-fp8.yaml"
	@echo "make test     run every test (unit, integration, real containers) in TEST_WORKERS=3 pytest-xdist workers"
	@echo "make bench    convergence benchmark: N QwenInferences to Ready, reconcile cost, steady-state writes"
	@echo "make bench-routing  vllm-router's policies over vLLM stand-ins on loopback (bench/routing.py, about 90 s)"
	@echo "make bench-gateway  the gateway's added latency, requests per core and limiter accuracy (bench/gateway.py, about 60 s)"
	@echo "make crds     regenerate crds/ (and the chart's CRD template) from the pydantic models"
	@echo "make lint     import layers, kube-score and kubeconform over the chart and the operator's children"
	@echo "make lock     re-resolve requirements.lock from pyproject.toml"

$(VENV_STAMP): requirements.lock pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --disable-pip-version-check --require-hashes -r requirements.lock
	$(VENV)/bin/pip install -q --disable-pip-version-check --no-deps -e .
	rm -f $(VENV)/.installed-*; touch $@

venv: $(VENV_STAMP)

tools:
	hack/install-node-packages.sh
	hack/build-tools.sh all
	hack/install-prometheus.sh
	hack/images.sh prebuild
	hack/kind-node-image.sh prebuild

cluster-up: venv
	hack/cluster.sh up

cluster-down:
	hack/cluster.sh down

demo: venv
	hack/demo.sh

demo-down:
	hack/demo.sh down

# CI runs this: the linters first (a new kube-score finding or a schema error fails it), then every test,
# in TEST_WORKERS pytest-xdist workers: most of a test's time is spent waiting on the cluster, so the
# real-node tests (one worker) and the kwok modules (whole modules per worker) run side by side.
TEST_WORKERS ?= 3
test: venv tools lint
	$(VENV)/bin/python -m pytest -n $(TEST_WORKERS) --durations=25 tests

test-unit: venv
	$(VENV)/bin/python -m pytest tests/unit

test-e2e: venv
	$(VENV)/bin/python -m pytest -m kind tests/e2e

kind-up: venv
	hack/kind-up.sh

kind-down:
	hack/kind-down.sh

crds: venv
	$(VENV)/bin/python hack/gen-crd.py

bench: venv
	$(VENV)/bin/python bench/converge.py

# vllm-router comes from its own venv (images/router/requirements.lock, --require-hashes), cached under ~/.cache.
bench-routing: venv
	$(VENV)/bin/python bench/routing.py

bench-gateway: venv
	$(VENV)/bin/python bench/gateway.py

# Import layers, then kube-score and kubeconform (strict, offline schemas) over the rendered chart and the
# operator's children for every example; remaining findings live in hack/lint-allowlist.yaml with a reason.
lint: venv
	hack/lint.sh

lock:
	$(PYTHON) -m venv /tmp/qwen-uv && /tmp/qwen-uv/bin/pip install -q uv==0.13.9
	/tmp/qwen-uv/bin/uv pip compile pyproject.toml --extra dev --generate-hashes --python-version 3.11 -o requirements.lock
	. hack/versions.env && echo "vllm-router==$${VLLM_ROUTER_VERSION#v}" > images/router/requirements.in
	/tmp/qwen-uv/bin/uv pip compile images/router/requirements.in --generate-hashes --python-version 3.11 \
	  --python-platform x86_64-manylinux_2_28 -o images/router/requirements.lock
