"""Ray's cluster launcher for cluster/azure.yaml, with this project's SSH sources and roles.

    python cluster/launcher.py up -y cluster/azure.yaml          # = ray up, checked and narrowed
    python cluster/launcher.py exec cluster/azure.yaml 'ray status'
    python cluster/launcher.py down -y cluster/azure.yaml        # any `ray` cluster command

Ray 2.60's Azure launcher deploys one ARM template (``azure-config-template.json``) each time
it bootstraps a config: at every ``ray up``, and at ``exec``, ``attach``, ``rsync-*``,
``dashboard``, ``down`` ... when it has no cached bootstrap. The template fixes two choices,
with no setting for either: a network security group rule that lets SSH in from any address
(``"sourceAddressPrefix": "*"``), and the built-in Contributor role on the whole resource group
for the cluster's managed identity, which every VM carries. A redeploy restores both, so a rule
tightened by hand does not last.

This wrapper refuses a config that `check.errors` faults (the SSH placeholder, ``*``, public
worker IPs, ``latest`` images, broad roles, no root squash probe), then runs Ray's own CLI in
this process with that template rewritten from the config (`patch_config_template`):

- the SSH rule's sources are ``provider.ssh_source_ranges``;
- the one Contributor assignment becomes one assignment per ``provider.identity_roles``
  (Virtual Machine Contributor, Managed Identity Operator), at the same scope.

``up`` always runs with ``--no-config-cache``, so each one redeploys the narrowed template
(undoing a plain ``ray up`` of this file). Everything else is Ray's. Run every cluster command
through this wrapper: plain ``ray exec cluster/azure.yaml`` without a cached bootstrap would
deploy Ray's unmodified template again. Needs the ``azure`` extra (the pinned Azure SDK).
"""

from __future__ import annotations

import copy
import importlib.util
import inspect
import json
import os
import sys
from pathlib import Path
from typing import Any

TEMPLATE = "azure-config-template.json"


def _check():
    spec = importlib.util.spec_from_file_location("bv_cluster_check", Path(__file__).with_name("check.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(spec.name, module)
    spec.loader.exec_module(module)
    return module


def patch_config_template(template: dict[str, Any], provider: dict[str, Any]) -> dict[str, Any]:
    """Ray's ``azure-config-template.json`` with the SSH rule's sources and the identity's roles
    taken from ``provider`` (``ssh_source_ranges``, ``identity_roles``). RuntimeError if the
    template no longer has the rule or the role assignment this expects (a changed Ray)."""
    roles = _check().IDENTITY_ROLES
    ranges = provider["ssh_source_ranges"]
    ranges = [ranges] if isinstance(ranges, str) else list(ranges)
    out = copy.deepcopy(template)
    resources, patched_ssh, assignments = [], 0, 0
    for resource in out["resources"]:
        kind = resource.get("type")
        if kind == "Microsoft.Network/networkSecurityGroups":
            for rule in resource["properties"]["securityRules"]:
                props = rule["properties"]
                if props.get("destinationPortRange") == "22" and props.get("direction") == "Inbound":
                    props.pop("sourceAddressPrefix", None)
                    props["sourceAddressPrefixes"] = ranges
                    patched_ssh += 1
            resources.append(resource)
        elif kind == "Microsoft.Authorization/roleAssignments":
            assignments += 1
            for i, role in enumerate(provider["identity_roles"]):
                assignment = copy.deepcopy(resource)
                if i:  # the first keeps Ray's name (Ray deletes it by that name before redeploying)
                    assignment["name"] = f"[guid(parameters('roleAssignmentGuid'), '{role}')]"
                props = assignment["properties"]
                props["roleDefinitionId"] = (
                    f"[subscriptionResourceId('Microsoft.Authorization/roleDefinitions', '{roles[role]}')]"
                )
                props["description"] = f"[concat('Ray autoscaler cluster ', parameters('clusterId'), ': {role}')]"
                resources.append(assignment)
        else:
            resources.append(resource)
    if patched_ssh != 1 or assignments != 1:
        raise RuntimeError(f"Ray's {TEMPLATE} changed ({patched_ssh} SSH rule(s), {assignments} role assignment(s)); "
                           "cluster/launcher.py needs updating")  # fmt: skip
    out["resources"] = resources
    return out


class TemplateJson:
    """Stands in for the ``json`` module inside Ray's Azure config module: ``load`` of Ray's
    config template returns it patched; everything else is ``json``'s."""

    def __init__(self, provider: dict[str, Any]):
        self.provider, self.applied = provider, 0

    def __getattr__(self, name: str):
        return getattr(json, name)

    def load(self, fp, *args, **kwargs):
        data = json.load(fp, *args, **kwargs)
        if os.path.basename(getattr(fp, "name", "")) == TEMPLATE:
            data = patch_config_template(data, self.provider)
            self.applied += 1
        return data


def install(provider: dict[str, Any]) -> TemplateJson:
    """Patch Ray's Azure config module (needs the Azure SDK) to deploy the narrowed template."""
    try:
        from ray.autoscaler._private._azure import config as azure_config
    except ImportError as e:
        raise SystemExit(f"cluster/launcher.py: the Azure SDK is missing ({e}); pip install -e '.[azure]'") from None
    source = inspect.getsource(azure_config._configure_resource_group)
    if TEMPLATE not in source or "json.load(template_fp)" not in source:
        raise SystemExit(f"cluster/launcher.py: Ray's Azure launcher no longer loads {TEMPLATE} the way this "
                         "wrapper patches; update cluster/launcher.py")  # fmt: skip
    proxy = TemplateJson(provider)
    azure_config.json = proxy
    return proxy


def config_path(argv: list[str]) -> str | None:
    return next((a for a in argv if a.endswith((".yaml", ".yml")) and not a.startswith("-")), None)


def main(argv: list[str]) -> int:
    import yaml

    path = config_path(argv)
    if path is None:
        print("usage: python cluster/launcher.py <ray cluster command> [options] CLUSTER.yaml ...", file=sys.stderr)
        return 2
    with open(path) as f:
        config = yaml.safe_load(f)
    problems = _check().errors(config)
    for problem in problems:
        print(f"{path}: {problem}", file=sys.stderr)
    if problems:
        print(f"{path}: refused ({len(problems)} problem(s)); see cluster/README.md", file=sys.stderr)
        return 1
    install(config["provider"])
    if argv[0] == "up" and "--no-config-cache" not in argv:
        argv = [argv[0], "--no-config-cache", *argv[1:]]
    from ray.scripts.scripts import cli

    return cli.main(args=argv, prog_name="ray", standalone_mode=True) or 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
