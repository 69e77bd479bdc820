"""Offline checks of the Azure cluster-launcher config (cluster/azure.yaml).

Nothing here contacts Azure or needs the Azure SDK or credentials: Ray's own validator runs on
the YAML (``prepare_config`` merges it with Ray's bundled ``azure/defaults.yaml``, a file
read, and ``validate_config`` checks it against ``ray-schema.json``; neither imports the
Azure provider). ``ray up`` runs the same two steps (``commands._bootstrap_config``); between
them it imports the Azure provider, which needs the SDK, and calls its
``fillout_available_node_types_resources``, which Azure does not override (a no-op), so
skipping the import changes nothing that is validated. The VM sizes, which Ray does not
check, are checked against ``cluster/vm_sizes.py``.

``make cluster-validate CLUSTER_CONFIG=my.yaml`` runs these checks on another config
(environment variable ``BERTVISION_CLUSTER_CONFIG``).
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import re
import sys
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
SHIPPED_CONFIG = ROOT / "cluster" / "azure.yaml"
CONFIG_PATH = Path(os.environ.get("BERTVISION_CLUSTER_CONFIG", SHIPPED_CONFIG)).resolve()
# Checks of this project's own choices (node type names, placeholders), not of validity.
shipped_only = pytest.mark.skipif(
    CONFIG_PATH != SHIPPED_CONFIG, reason="checks the shipped cluster/azure.yaml only"
)
COMMAND_KEYS = (
    "initialization_commands",
    "setup_commands",
    "head_setup_commands",
    "worker_setup_commands",
    "head_start_ray_commands",
    "worker_start_ray_commands",
)


def _load_vm_sizes():
    spec = importlib.util.spec_from_file_location("bv_vm_sizes", ROOT / "cluster" / "vm_sizes.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


vm_sizes = _load_vm_sizes()


@pytest.fixture(scope="module")
def config() -> dict:
    with open(CONFIG_PATH) as f:
        return yaml.safe_load(f)


@pytest.fixture(scope="module")
def prepared(config) -> dict:
    return prepare_config(copy.deepcopy(config))


def _commands(config: dict) -> list[str]:
    return [cmd for key in COMMAND_KEYS for cmd in config.get(key) or []]


def _worker_types(config: dict) -> dict:
    head = config["head_node_type"]
    return {k: v for k, v in config["available_node_types"].items() if k != head}


def _arm(node_type: dict) -> dict:
    return node_type["node_config"]["azure_arm_parameters"]


# Ray's validator -----------------------------------------------------------------------------


def test_rays_validator_accepts_the_config_offline(config):
    before = set(sys.modules)
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)  # raises on any problem
    loaded = set(sys.modules) - before
    # Neither step needed the Azure SDK or Ray's Azure provider (so no credentials either).
    assert not [m for m in loaded if m.split(".")[0] == "azure" or "_azure" in m]
    # Our values survive the merge with Ray's defaults.yaml (a shallow dict update).
    assert prepared["head_node_type"] == "head"
    assert set(prepared["available_node_types"]) == set(config["available_node_types"])
    assert prepared["setup_commands"] == config["setup_commands"]
    # prepare_config merges setup_commands into the head's and the workers' lists.
    n_common = len(config["setup_commands"])
    assert prepared["head_setup_commands"][:n_common] == config["setup_commands"]


def test_rays_validator_rejects_an_unknown_top_level_key(config):
    broken = copy.deepcopy(config)
    broken["max_worker"] = 4  # typo of max_workers
    with pytest.raises(jsonschema.ValidationError, match="max_worker"):
        validate_config(prepare_config(broken))


@shipped_only
def test_rays_validator_rejects_an_unknown_node_type_key(config):
    broken = copy.deepcopy(config)
    broken["available_node_types"]["gpu_a100_1"]["max_worker"] = 4
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare_config(broken))


def test_rays_validator_rejects_a_missing_head_node_type(config):
    broken = copy.deepcopy(config)
    broken["head_node_type"] = "ray.head.default"
    with pytest.raises(ValueError, match="head_node_type"):
        validate_config(prepare_config(broken))


# VM sizes: not checked by Ray ----------------------------------------------------------------


def test_every_vm_size_is_supported_and_resources_match_it(config):
    assert vm_sizes.size_errors(config) == []
    for name, node_type in config["available_node_types"].items():
        size = vm_sizes.SUPPORTED_VM_SIZES[_arm(node_type)["vmSize"]]
        assert node_type["resources"].get("GPU", 0) == size.gpus, name


def test_gpu_counts_of_the_shipped_sizes():
    sizes = vm_sizes.SUPPORTED_VM_SIZES
    assert sizes["Standard_NC6s_v3"].gpus == 1
    assert sizes["Standard_NC24s_v3"].gpus == 4
    assert sizes["Standard_NC24ads_A100_v4"].gpus == 1
    assert sizes["Standard_NC24ads_A100_v4"].gpu_memory_gb == 80
    assert sizes["Standard_NC6s_v3"].retired == "2025-09-30"


@shipped_only
def test_a_vm_size_typo_passes_ray_but_fails_the_size_check(config):
    broken = copy.deepcopy(config)
    _arm(broken["available_node_types"]["gpu_v100_1"])["vmSize"] = "Standard_NC6s_v9"
    validate_config(prepare_config(copy.deepcopy(broken)))  # Ray does not notice
    errors = vm_sizes.size_errors(broken)
    assert len(errors) == 1 and "Standard_NC6s_v9" in errors[0] and "gpu_v100_1" in errors[0]


@shipped_only
def test_a_gpu_count_mismatch_fails_the_size_check(config):
    broken = copy.deepcopy(config)
    broken["available_node_types"]["gpu_v100_4"]["resources"]["GPU"] = 1
    assert any("gpu_v100_4" in e and "4 GPU" in e for e in vm_sizes.size_errors(broken))


def test_the_head_is_a_cpu_node(config):
    head = config["available_node_types"][config["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0
    assert vm_sizes.SUPPORTED_VM_SIZES[_arm(head)["vmSize"]].gpus == 0
    assert head.get("max_workers", 0) == 0


def test_azure_arm_parameters_are_known_to_rays_vm_template(config):
    """A misspelt ARM parameter (vmsize, evictionpolicy) would only fail at deployment."""
    template = Path(ray.__file__).parent / "autoscaler/_private/_azure/azure-vm-template.json"
    known = set(json.loads(template.read_text())["parameters"]) | {"availability_zone"}
    for name, node_type in config["available_node_types"].items():
        assert set(_arm(node_type)) <= known, (name, set(_arm(node_type)) - known)


# Node types, bounds, spot --------------------------------------------------------------------


@shipped_only
def test_expected_node_types_exist(config):
    types = config["available_node_types"]
    expected = {
        "gpu_v100_1": "Standard_NC6s_v3",
        "gpu_v100_4": "Standard_NC24s_v3",
        "gpu_a100_1": "Standard_NC24ads_A100_v4",
    }
    for name, vm_size in expected.items():
        assert _arm(types[name])["vmSize"] == vm_size


def test_worker_bounds_are_sane(config, prepared):
    total_min = 0
    for name, node_type in prepared["available_node_types"].items():
        lo, hi = node_type["min_workers"], node_type["max_workers"]
        assert 0 <= lo <= hi, name
        assert hi <= prepared["max_workers"], name
        total_min += lo
    assert total_min <= prepared["max_workers"]
    # At least one GPU type can start, or the cluster could never run the GPU jobs.
    assert any(
        t.get("max_workers", 0) > 0 and t["resources"].get("GPU", 0) > 0
        for t in _worker_types(config).values()
    )
    assert config["idle_timeout_minutes"] > 0 and config["upscaling_speed"] > 0


@shipped_only
def test_a_spot_variant_exists(config):
    spot = {
        name: t
        for name, t in config["available_node_types"].items()
        if _arm(t).get("priority") == "Spot"
    }
    assert any(_arm(t)["vmSize"] == "Standard_NC6s_v3" for t in spot.values())  # V100 spot
    for name, node_type in spot.items():
        arm = _arm(node_type)
        assert arm["evictionPolicy"] == "Delete", name
        assert arm["billingProfile"] == {"maxPrice": -1}, name
    for name, node_type in config["available_node_types"].items():
        if name not in spot:
            assert "priority" not in _arm(node_type) or _arm(node_type)["priority"] == "Regular"


# Dashboard, auth, versions, storage ----------------------------------------------------------


def test_dashboard_is_bound_to_localhost(config):
    head_start = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start
    assert "ray start --head" in head_start
    assert "0.0.0.0" not in CONFIG_PATH.read_text()


def test_token_auth_on_every_node(config):
    head_start = [c for c in config["head_start_ray_commands"] if "ray start" in c]
    worker_start = [c for c in config["worker_start_ray_commands"] if "ray start" in c]
    assert head_start and worker_start
    for cmd in head_start + worker_start:
        assert "RAY_AUTH_MODE=token" in cmd, cmd
    assert any("ray get-auth-token --generate" in c for c in config["head_setup_commands"])
    assert "~/.ray/auth_token" in config["cluster_synced_files"]


def test_ray_pin_matches_the_installed_client(config):
    pins = re.findall(r"ray\[([a-z,]+)\]==([0-9][0-9.]*)", " ".join(_commands(config)))
    assert pins, "setup must pin ray[...]==X.Y.Z"
    client = ".".join(ray.__version__.split(".")[:3])
    for extras, version in pins:
        assert version == client, (version, client)
        assert {"default", "data", "train", "tune"} <= set(extras.split(","))


def test_head_installs_the_same_azure_sdk_as_the_azure_extra(config):
    with open(ROOT / "pyproject.toml", "rb") as f:
        extra = tomllib.load(f)["project"]["optional-dependencies"]["azure"]
    head = " ".join(config["head_setup_commands"])
    installed = set(re.findall(r"\b(?:azure-[a-z-]+|msrest|msrestazure)==[0-9][0-9a-z.]*", head))
    assert installed == set(extra)


def test_shared_storage_is_mounted_and_exported(config):
    commands = " ".join(_commands(config))
    assert "mount -t nfs" in commands and "/mnt/bertvision" in commands
    assert "BERTVISION_DATA=/mnt/bertvision/data" in commands
    assert "BERTVISION_RUNS=/mnt/bertvision/runs" in commands


@shipped_only
def test_project_is_mounted_and_installed(config):
    mounts = config["file_mounts"]
    assert mounts["~/bertvision/pyproject.toml"] == "./pyproject.toml"
    for remote, local in mounts.items():
        assert (ROOT / local).exists(), (remote, local)
    assert any('pip install -e "$HOME/bertvision"' in c for c in config["setup_commands"])
    assert any(re.search(r"pip install torch==2\.13\.0\b", c) for c in config["setup_commands"])


@shipped_only
def test_placeholders_are_marked(config):
    text = CONFIG_PATH.read_text()
    for line in text.splitlines():
        if re.match(r"\s*(location|resource_group|subscription_id):", line):
            assert "# CHANGE ME" in line, line
    assert config["provider"]["subscription_id"] == "00000000-0000-0000-0000-000000000000"
    # The NFS share placeholder stops setup with a message until it is filled in.
    init = " ".join(config["initialization_commands"])
    assert "CHANGE_ME_ACCOUNT" in init and "*CHANGE_ME*) echo" in init


def test_no_secrets_in_the_config():
    text = CONFIG_PATH.read_text()
    for secret in (r"AccountKey=", r"[?&]sig=", r"-----BEGIN", r"password", r"client_secret"):
        assert not re.search(secret, text, re.IGNORECASE), secret
