"""Offline checks of the Azure cluster-launcher config (cluster/azure.yaml).

Nothing here contacts Azure or needs the Azure SDK or credentials: Ray's own validator runs on
the YAML (``prepare_config`` merges it with Ray's bundled ``azure/defaults.yaml``, a file
read, and ``validate_config`` checks it against ``ray-schema.json``; neither imports the
Azure provider). ``ray up`` runs the same two steps (``commands._bootstrap_config``); between
them it imports the Azure provider, which needs the SDK, and calls its
``fillout_available_node_types_resources``, which Azure does not override (a no-op), so
skipping the import changes nothing that is validated. The VM sizes, which Ray does not
check, are checked against ``cluster/vm_sizes.py``. The security defaults (SSH only from
``provider.ssh_source_ranges``, no public worker IPs, pinned images, the narrow identity roles,
NFS root squash) are checked by ``cluster/check.py``, and ``cluster/launcher.py``'s rewrite of
Ray's Azure ARM template (which alone would open SSH to any address and grant Contributor) is
checked on the template Ray ships.

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


def _load_cluster_module(name: str, file: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "cluster" / file)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


check = _load_cluster_module("bv_cluster_check", "check.py")
launcher = _load_cluster_module("bv_cluster_launcher", "launcher.py")
RAY_AZURE = Path(ray.__file__).parent / "autoscaler" / "_private" / "_azure"
CONTRIBUTOR_ID = "b24988ac-6180-42a0-ab88-20f7382dd24c"  # Azure's built-in Contributor role
ROLE_ASSIGNMENT = "Microsoft.Authorization/roleAssignments"
MY_RANGE = ["203.0.113.7/32"]  # a documentation address (RFC 5737)


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


# Security defaults (cluster/check.py) -------------------------------------------------------


def _settled(config: dict) -> dict:
    """A copy with the SSH placeholder filled in, as a user's config would be."""
    good = copy.deepcopy(config)
    if any("CHANGE_ME" in str(r) for r in good["provider"].get("ssh_source_ranges") or []):
        good["provider"]["ssh_source_ranges"] = list(MY_RANGE)
    return good


def test_the_security_checks_pass_once_the_ssh_range_is_set(config):
    errors = check.security_errors(config)
    if CONFIG_PATH == SHIPPED_CONFIG:  # the shipped file: only the placeholder is left to set
        assert len(errors) == 1 and "placeholder" in errors[0], errors
    else:
        assert errors == []
    assert check.security_errors(_settled(config)) == []
    validate_config(prepare_config(_settled(config)))  # Ray accepts the extra provider keys


@shipped_only
def test_the_ssh_source_range_is_a_required_setting_with_a_refused_placeholder(config):
    assert config["provider"]["ssh_source_ranges"] == ["CHANGE_ME"]
    line = next(x for x in CONFIG_PATH.read_text().splitlines() if x.strip().startswith("ssh_source_ranges:"))
    assert "# CHANGE ME" in line
    assert ["placeholder" in e for e in check.ssh_source_errors(config)] == [True]
    assert check.errors(config) and check.main([str(CONFIG_PATH)]) == 1  # what `make cluster-validate` runs


@pytest.mark.parametrize(
    "sources",
    [["0.0.0.0/0"], ["*"], ["Internet"], ["Any"], ["::/0"], ["0.0.0.0/1"], ["10.0.0.0/4"], "0.0.0.0/0",
     [*MY_RANGE, "*"], ["my laptop"], [], None],
)  # fmt: skip
def test_ssh_from_anywhere_is_refused(config, sources):
    broken = _settled(config)
    if sources is None:
        del broken["provider"]["ssh_source_ranges"]
    else:
        broken["provider"]["ssh_source_ranges"] = sources
    errors = check.security_errors(broken)
    assert len(errors) == 1 and "ssh_source_ranges" in errors[0], errors


def test_narrow_ssh_ranges_are_accepted(config):
    ok = _settled(config)
    ok["provider"]["ssh_source_ranges"] = ["203.0.113.7", "198.51.100.0/24", "10.0.0.0/8", "2001:db8::/48"]
    assert check.security_errors(ok) == []


def test_workers_get_private_addresses_and_the_head_keeps_its_public_one(config):
    assert config["provider"]["use_internal_ips"] is True
    assert config["provider"]["use_external_head_ip"] is True
    # Ray 2.60's Azure provider: a public IP only where not use_internal_ips, or for the head
    # with use_external_head_ip; the launcher reaches the head by its external IP.
    provider_src = (RAY_AZURE / "node_provider.py").read_text()
    assert 'template_params["provisionPublicIp"] = not self.provider_config.get(' in provider_src
    assert provider_src.count('"use_external_head_ip"') >= 2


@pytest.mark.parametrize("change", [{"use_internal_ips": False}, {"use_internal_ips": None},
                                    {"use_external_head_ip": False}])  # fmt: skip
def test_a_config_giving_workers_public_ips_is_refused(config, change):
    broken = _settled(config)
    for key, value in change.items():
        if value is None:
            del broken["provider"][key]
        else:
            broken["provider"][key] = value
    errors = check.security_errors(broken)
    assert len(errors) == 1 and next(iter(change)) in errors[0], errors


def test_every_image_version_is_pinned(config):
    for name, node_type in config["available_node_types"].items():
        arm = _arm(node_type)
        assert arm.get("imageId") or re.fullmatch(r"\d+(\.\d+){1,3}", str(arm["imageVersion"])), name
    assert "latest" not in [str(_arm(t).get("imageVersion")) for t in config["available_node_types"].values()]


@shipped_only
def test_the_shipped_image_is_the_pinned_dsvm(config):
    for node_type in config["available_node_types"].values():
        arm = _arm(node_type)
        assert (arm["imagePublisher"], arm["imageOffer"], arm["imageSku"], arm["imageVersion"]) == (
            "microsoft-dsvm", "ubuntu-2204", "2204-gen2", "25.06.18")  # fmt: skip


@pytest.mark.parametrize("version", ["latest", "", None, "Latest"])
def test_a_moving_image_is_refused(config, version):
    broken = _settled(config)
    arm = _arm(next(iter(_worker_types(broken).values())))
    arm.pop("imageId", None)
    if version is None:
        arm.pop("imageVersion", None)
    else:
        arm["imageVersion"] = version
    errors = check.security_errors(broken)
    assert len(errors) == 1 and "imageVersion" in errors[0], errors


def test_the_identity_gets_the_two_narrow_roles(config):
    assert config["provider"]["identity_roles"] == ["Virtual Machine Contributor", "Managed Identity Operator"]
    assert set(check.IDENTITY_ROLES) == set(config["provider"]["identity_roles"])
    assert CONTRIBUTOR_ID not in check.IDENTITY_ROLES.values()


@pytest.mark.parametrize(
    "roles",
    [["Contributor"], ["Owner"], ["Virtual Machine Contributor", "Managed Identity Operator", "Contributor"],
     ["Virtual Machine Contributor", "Managed Identity Operator", "Network Contributor"],
     ["Virtual Machine Contributor"], None],
)  # fmt: skip
def test_broad_or_missing_roles_are_refused(config, roles):
    broken = _settled(config)
    if roles is None:
        del broken["provider"]["identity_roles"]
    else:
        broken["provider"]["identity_roles"] = roles
    errors = check.security_errors(broken)
    assert errors and all("identity_roles" in e for e in errors), errors
    if roles and "Contributor" in roles:
        assert any("broader than the autoscaler needs" in e for e in errors)


def test_the_nfs_mount_stops_setup_while_root_squash_is_off(config):
    init = " ".join(config["initialization_commands"])
    assert check.ROOT_SQUASH_PROBE in init
    # root creates a probe file on the share; owned by uid 0 means root squash is off
    assert 'sudo touch "$probe"' in init and '[ "$(stat -c %u "$probe")" != 0 ]' in init
    assert check.root_squash_errors(config) == []


def test_a_mount_without_the_root_squash_probe_is_refused(config):
    broken = _settled(config)
    init = broken["initialization_commands"][0]
    cut = init.index("&& probe=")
    broken["initialization_commands"][0] = init[:cut] + "&& mkdir -p /mnt/bertvision/runs /mnt/bertvision/data"
    errors = check.security_errors(broken)
    assert len(errors) == 1 and "root squash" in errors[0], errors


@shipped_only
def test_the_readme_turns_root_squash_on_and_documents_what_remains():
    text = (ROOT / "cluster" / "README.md").read_text()
    # the share is created with root squash off only for the first `up`, then turned on
    assert "az storage share-rm update -g $DATA_RG --storage-account $SA -n $SHARE --root-squash RootSquash" in text
    assert "What the cluster trusts" in text
    assert "python cluster/launcher.py up" in text


# cluster/launcher.py: Ray's ARM template, narrowed -----------------------------------------


def _template() -> dict:
    return json.loads((RAY_AZURE / "azure-config-template.json").read_text())


def _ssh_rules(template: dict) -> list[dict]:
    return [rule["properties"] for r in template["resources"] if r["type"] == "Microsoft.Network/networkSecurityGroups"
            for rule in r["properties"]["securityRules"] if rule["properties"].get("destinationPortRange") == "22"]  # fmt: skip


def test_rays_own_template_opens_ssh_to_anyone_and_grants_contributor():
    """Why the launcher exists: the template Ray 2.60 deploys, with no setting for either."""
    template = _template()
    assert [r["sourceAddressPrefix"] for r in _ssh_rules(template)] == ["*"]
    assert CONTRIBUTOR_ID in template["variables"]["contributor"]
    assert [r for r in template["resources"] if r["type"] == ROLE_ASSIGNMENT][0]["properties"]["roleDefinitionId"] == \
        "[variables('contributor')]"  # fmt: skip


def test_the_launcher_narrows_ssh_and_roles_in_rays_template(config):
    provider = _settled(config)["provider"]
    template = _template()
    patched = launcher.patch_config_template(template, provider)
    rules = _ssh_rules(patched)
    assert len(rules) == 1 and rules[0]["sourceAddressPrefixes"] == provider["ssh_source_ranges"]
    assert "sourceAddressPrefix" not in rules[0]
    assignments = [r for r in patched["resources"] if r["type"] == ROLE_ASSIGNMENT]
    ids = [re.search(r"'([0-9a-f-]{36})'", a["properties"]["roleDefinitionId"]).group(1) for a in assignments]
    assert ids == [check.IDENTITY_ROLES[r] for r in provider["identity_roles"]]
    assert CONTRIBUTOR_ID not in json.dumps(assignments)
    # Ray deletes its assignment by this name before redeploying: the first keeps it; names differ.
    assert assignments[0]["name"] == "[parameters('roleAssignmentGuid')]"
    assert len({a["name"] for a in assignments}) == len(assignments)
    assert all(a["properties"]["scope"] == "[resourceGroup().id]" for a in assignments)
    # Nothing else changed; Ray's template itself is untouched.
    others = [r for r in patched["resources"] if r["type"] not in (ROLE_ASSIGNMENT, "Microsoft.Network/networkSecurityGroups")]
    assert others == [r for r in template["resources"] if r["type"] not in (ROLE_ASSIGNMENT, "Microsoft.Network/networkSecurityGroups")]
    assert _template() == template and _ssh_rules(template)[0]["sourceAddressPrefix"] == "*"


def test_the_launcher_hooks_the_template_where_ray_loads_it(config):
    proxy = launcher.TemplateJson(_settled(config)["provider"])
    with open(RAY_AZURE / "azure-config-template.json") as f:
        loaded = proxy.load(f)
    assert proxy.applied == 1 and _ssh_rules(loaded)[0]["sourceAddressPrefixes"] == MY_RANGE
    assert proxy.loads('{"a": 1}') == {"a": 1}  # the rest is json's
    # Ray 2.60 loads the template exactly this way (install() checks the same at run time).
    source = (RAY_AZURE / "config.py").read_text()
    assert 'joinpath("azure-config-template.json")' in source and "json.load(template_fp)" in source
    assert source.count("import json") == 1


@shipped_only
def test_the_launcher_refuses_the_shipped_placeholder_before_ray_runs(capsys):
    assert launcher.main(["up", "-y", str(CONFIG_PATH)]) == 1
    err = capsys.readouterr().err
    assert "ssh_source_ranges" in err and "placeholder" in err and "refused" in err


@shipped_only
def test_the_makefile_runs_cluster_commands_through_the_launcher():
    text = (ROOT / "Makefile").read_text()
    targets = text[text.index("cluster-validate:"):]
    assert not re.search(r"\$\(BIN\)/ray (up|down|exec|attach|rsync-up|rsync-down|dashboard|monitor)\b", targets)
    assert "LAUNCH := $(PY) cluster/launcher.py" in text
    assert "$(LAUNCH) up -y $(CLUSTER_CONFIG)" in targets and "$(PY) cluster/check.py $(CLUSTER_CONFIG)" in targets


def _stub_azure_sdk(monkeypatch) -> list:
    """Stand-ins for the Azure SDK modules Ray's Azure config module imports, recording every
    ARM deployment instead of sending it. Returns the list the deployments are appended to."""
    import types

    deployed = []

    class ResourceNotFoundError(Exception):
        pass

    class _Poller:
        def __init__(self, value=None):
            self.value = value

        def result(self):
            return self.value

        def wait(self):
            return None

    def _not_found(*args, **kwargs):
        raise ResourceNotFoundError("not found")

    class ResourceManagementClient:
        def __init__(self, credential, subscription_id):
            self.resource_groups = types.SimpleNamespace(create_or_update=lambda **kw: _Poller())
            self.resources = types.SimpleNamespace(list_by_resource_group=lambda *a, **kw: [], get_by_id=_not_found,
                                                   delete_by_id=lambda **kw: _Poller())  # fmt: skip
            self.deployments = types.SimpleNamespace(create_or_update=self._deploy)

        @staticmethod
        def _deploy(resource_group_name, deployment_name, parameters):
            deployed.append(copy.deepcopy(parameters["properties"]["template"]))
            outputs = {k: {"value": f"/subscriptions/x/{k}"} for k in ("msi", "nsg", "subnet")}
            return _Poller(types.SimpleNamespace(properties=types.SimpleNamespace(outputs=outputs)))

    modules = {
        "azure": types.ModuleType("azure"),
        "azure.common": types.ModuleType("azure.common"),
        "azure.common.credentials": types.SimpleNamespace(get_cli_profile=lambda: None),
        "azure.core": types.ModuleType("azure.core"),
        "azure.core.exceptions": types.SimpleNamespace(HttpResponseError=Exception, ResourceNotFoundError=ResourceNotFoundError),
        "azure.identity": types.SimpleNamespace(AzureCliCredential=lambda: None),
        "azure.mgmt": types.ModuleType("azure.mgmt"),
        "azure.mgmt.resource": types.SimpleNamespace(ResourceManagementClient=ResourceManagementClient),
        "azure.mgmt.resource.resources": types.ModuleType("azure.mgmt.resource.resources"),
        "azure.mgmt.resource.resources.models": types.SimpleNamespace(
            DeploymentMode=types.SimpleNamespace(incremental="Incremental")),
    }  # fmt: skip
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.delitem(sys.modules, "ray.autoscaler._private._azure.config", raising=False)
    return deployed


def test_rays_azure_bootstrap_deploys_the_narrowed_template_through_the_launcher(config, monkeypatch):
    """Ray's own `_configure_resource_group`, run offline against a stub Azure SDK: what it
    deploys alone (SSH from '*', Contributor), and what it deploys once the launcher is installed."""
    import importlib

    deployed = _stub_azure_sdk(monkeypatch)
    azure_config = importlib.import_module("ray.autoscaler._private._azure.config")
    settled = _settled(config)
    azure_config._configure_resource_group(copy.deepcopy(settled))  # plain Ray
    proxy = launcher.install(settled["provider"])
    assert azure_config.json is proxy
    azure_config._configure_resource_group(copy.deepcopy(settled))  # through the launcher
    monkeypatch.delitem(sys.modules, "ray.autoscaler._private._azure.config")  # drop the patched module
    plain, narrowed = deployed
    assert [r["sourceAddressPrefix"] for r in _ssh_rules(plain)] == ["*"]
    assert CONTRIBUTOR_ID in json.dumps(plain["variables"]) and proxy.applied == 1
    assert [r["sourceAddressPrefixes"] for r in _ssh_rules(narrowed)] == [MY_RANGE]
    assignments = [r for r in narrowed["resources"] if r["type"] == ROLE_ASSIGNMENT]
    assert len(assignments) == 2 and CONTRIBUTOR_ID not in json.dumps(assignments)
