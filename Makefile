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
# With a local data folder everything `make run` needs is local (the encoder is bundled): it runs
# offline, never waiting on Hub retries (HF_HUB_OFFLINE=0 allows them). Without one it fetches
# the task from the Hub (README: "Where data comes from"). The tests go offline on their own.
OFFLINE := $(if $(BERTVISION_DATA),HF_HUB_OFFLINE=$(or $(HF_HUB_OFFLINE),1) HF_DATASETS_OFFLINE=$(or $(HF_DATASETS_OFFLINE),1))

.PHONY: setup test lint run clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check $(TORCH_SPEC)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	@touch $(STAMP)

# The tests also run the peers of benchmarks/peers.py (LoRA through peft, SetFit): the `peers`
# extra, installed for `make test` only; `make run` does not need it.
PEERS_STAMP := $(VENV)/.bertvision-peers-installed
$(PEERS_STAMP): $(STAMP)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev,peers]'
	@touch $(PEERS_STAMP)

lint: setup
	$(BIN)/ruff check bertvision ray_jobs tests benchmarks cluster

# Two pytest workers, one test file each at a time (module-scoped Ray heads stay shared within
# a file): the suite is CPU-bound and this halves its wall time on a 2-core machine. Files are
# handed out in the order tests/conftest.py sorts them (the longest first).
TEST_WORKERS ?= 2
test: lint $(PEERS_STAMP)
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

# The method end to end on STS-B with the bundled encoder, on an in-process Ray (about 7 minutes
# on a 2-core CPU after set-up): the majority class, full fine-tuning (3 seeds, 1 epoch), every
# layer's CLS states of seed 0's checkpoint, a 24-trial HyperOpt search over heads, the best head
# with 3 seeds, the ensemble, then RUN_DIR/report.html and the headline in words. A rerun reuses
# every finished stage. Another task, more options: make run RUN_TASK=rte RUN_ARGS='--fractions 0.1 0.5'
RUN_DIR ?= runs/demo
RUN_TASK ?= stsb
RUN_ARGS ?=
run: setup
	$(OFFLINE) $(BIN)/bertvision run --task $(RUN_TASK) --out $(RUN_DIR) $(RUN_ARGS)
	@echo "TensorBoard: $(BIN)/tensorboard --logdir $(RUN_DIR) --host 127.0.0.1"

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info

# ---------------------------------------------------------------------------------------------
# Azure cluster (Ray cluster launcher). Walk-through: cluster/README.md.
# Only cluster-validate works offline; the others talk to Azure (after `az login`) or to the
# cluster through SSH. Run them from the repository root (file_mounts paths are relative).
# Cluster commands go through cluster/launcher.py, which checks the config (cluster/check.py)
# and runs Ray's CLI with SSH limited to provider.ssh_source_ranges and the narrow identity roles.
CLUSTER_CONFIG ?= cluster/azure.yaml
LAUNCH := $(PY) cluster/launcher.py
# Where cluster-token keeps a private copy of the head's auth token; cluster-submit uses it.
CLUSTER_TOKEN ?= $(HOME)/.ray/bertvision-azure.token
# The dashboard (and job API) through the SSH tunnel that cluster-dashboard holds open.
CLUSTER_DASHBOARD ?= http://127.0.0.1:8265
CLUSTER_RUNS ?= /mnt/bertvision/runs
JOB ?= python -m ray_jobs.embed --help
# `ray up` and every command that finds the head (exec, rsync, dashboard, down) need the
# pinned Azure SDK of the `azure` extra; `ray job submit` does not.
AZURE_STAMP := $(VENV)/.bertvision-azure-installed

.PHONY: cluster-validate cluster-up cluster-token cluster-dashboard cluster-submit \
	cluster-tensorboard cluster-down

$(AZURE_STAMP): $(STAMP) pyproject.toml
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev,azure]'
	@touch $(AZURE_STAMP)

# Ray's own validator on the YAML, the VM size list (cluster/vm_sizes.py) and the security
# checks (cluster/check.py: refuses the shipped SSH placeholder until you set it); no Azure.
cluster-validate: setup
	BERTVISION_CLUSTER_CONFIG=$(CLUSTER_CONFIG) $(PY) -m pytest -q -p no:cacheprovider tests/test_cluster_config.py
	$(PY) cluster/check.py $(CLUSTER_CONFIG)

# Creates (or updates) the resource group, network, head VM; workers follow on demand.
cluster-up: setup $(AZURE_STAMP)
	$(LAUNCH) up -y $(CLUSTER_CONFIG)

# Prints the head's auth token (for the dashboard's login) and keeps a private copy for
# cluster-submit.
cluster-token: setup $(AZURE_STAMP)
	$(LAUNCH) exec $(CLUSTER_CONFIG) 'ray get-auth-token; echo'
	@mkdir -p $(dir $(CLUSTER_TOKEN))
	@umask 077; $(LAUNCH) rsync-down $(CLUSTER_CONFIG) /home/ubuntu/.ray/auth_token $(CLUSTER_TOKEN)
	@chmod 600 $(CLUSTER_TOKEN)
	@echo "token saved to $(CLUSTER_TOKEN); use: export RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH=$(CLUSTER_TOKEN)"

# Forwards the dashboard to http://127.0.0.1:8265 over SSH; keep it running (Ctrl-C ends it).
cluster-dashboard: setup $(AZURE_STAMP)
	$(LAUNCH) dashboard $(CLUSTER_CONFIG)

# Submits JOB through the tunnel, uploading this checkout as the job's working directory.
#   make cluster-submit JOB='python -m ray_jobs.embed --task rte --checkpoint ... --out ...'
cluster-submit: setup
	RAY_AUTH_MODE=token $(if $(wildcard $(CLUSTER_TOKEN)),RAY_AUTH_TOKEN_PATH=$(CLUSTER_TOKEN)) \
	$(BIN)/ray job submit --address $(CLUSTER_DASHBOARD) --working-dir . -- $(JOB)

# TensorBoard on the head over the shared runs folder, forwarded to http://127.0.0.1:6006.
cluster-tensorboard: setup $(AZURE_STAMP)
	$(LAUNCH) exec -p 6006 $(CLUSTER_CONFIG) 'tensorboard --logdir $(CLUSTER_RUNS) --host 127.0.0.1 --port 6006'

# Deletes the VMs (the resource group, network and the NFS share stay).
cluster-down: setup $(AZURE_STAMP)
	$(LAUNCH) down -y $(CLUSTER_CONFIG)
