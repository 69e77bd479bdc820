# BERTVision: `make run` runs the main job on the embedded defaults, `make test` the tests.
# Both create the virtual environment and install everything on first use.

SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
# The CPU build of torch 2.13.0 lies on this machine's disk; any other spec may pull a
# multi-GB CUDA build. On a GPU machine: make setup TORCH_SPEC='torch==2.13.0 --index-url ...'
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.bertvision-installed

# Use the shared GLUE / SQuAD data when it lies beside the repository and the user has not
# chosen a folder. The library itself never assumes this path.
SHARED_DATA := $(abspath ../shared/data)
ifeq ($(origin BERTVISION_DATA),undefined)
  ifneq ($(wildcard $(SHARED_DATA)/glue),)
    export BERTVISION_DATA := $(SHARED_DATA)
  endif
endif
# Everything `make run` and `make test` need is local (bundled encoder, local data): never
# wait on Hub retries. Override with HF_HUB_OFFLINE=0 to allow Hub downloads.
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1

.PHONY: setup test lint run clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check $(TORCH_SPEC)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	@touch $(STAMP)

lint: setup
	$(BIN)/ruff check bertvision ray_jobs tests

test: lint
	$(PY) -m pytest -q

# The method end to end on RTE with the bundled encoder, on this machine's CPU (a few minutes):
# fine-tune 0.3 epoch -> store every layer's CLS states -> AdapterPooler heads, 3 seeds -> dev.
RUN_DIR ?= runs/demo
run: setup
	$(BIN)/bertvision tasks
	$(BIN)/bertvision finetune --task rte --epochs 0.3 --out $(RUN_DIR)/finetune
	$(BIN)/bertvision embed --task rte --checkpoint $(RUN_DIR)/finetune/checkpoint-e0.3 --splits train dev --out $(RUN_DIR)/store
	$(BIN)/bertvision store verify $(RUN_DIR)/store
	$(BIN)/bertvision train --store $(RUN_DIR)/store --seeds 0 1 2 --out $(RUN_DIR)/heads
	@echo "TensorBoard: $(BIN)/tensorboard --logdir $(RUN_DIR)/heads --host 127.0.0.1"

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
