"""Offline security checks of the cluster config: what is exposed, and what the nodes may do.

Ray's validator checks the config's shape only. These checks refuse a config that would

- let SSH in from anywhere: ``provider.ssh_source_ranges`` (read by ``cluster/launcher.py``,
  which writes it into the network security group Ray deploys; Ray's own template says ``*``)
  is required, and the shipped placeholder, ``*``, ``Any``, ``Internet`` and ``/0`` ranges
  (or anything wider than a /8) are refused;
- give workers public IP addresses: ``provider.use_internal_ips`` must be true (workers get
  private addresses only), with ``provider.use_external_head_ip`` true (the head keeps the one
  public address, which the launcher reaches over SSH);
- boot an image that moves: every node's ``imageVersion`` must be a concrete version
  (``25.06.18``), not ``latest`` (or the node must name an ``imageId``);
- hand the nodes' managed identity more than the autoscaler needs:
  ``provider.identity_roles`` must be exactly `IDENTITY_ROLES` (Ray's template would grant
  Contributor on the resource group);
- mount an NFS share whose root squash is off: the share's mount in
  ``initialization_commands`` must be followed by the probe that stops setup when root on a
  node is root on the share (`ROOT_SQUASH_PROBE`).

    python cluster/check.py [cluster/azure.yaml]    # + the VM sizes; one line per problem, exit 1

Nothing here contacts Azure. ``make cluster-validate`` runs it after the tests.
"""

from __future__ import annotations

import importlib.util
import ipaddress
import re
import sys
from pathlib import Path
from typing import Any

PLACEHOLDER = "CHANGE_ME"
# Sources that mean "any address" to an Azure NSG rule (service tags included).
ANY_SOURCE = {"*", "any", "internet", "0.0.0.0/0", "::/0"}
# The narrowest pair of built-in roles that lets the autoscaler on the head start and delete
# workers (cluster/README.md, "What the cluster trusts"): name -> role definition id.
IDENTITY_ROLES = {
    # VMs, their disks and NICs, ARM deployments, joining the subnet and the NSG; read-only
    # on networks and public IPs.
    "Virtual Machine Contributor": "9980e02c-c2be-4d73-94e8-173b1dc7cf3c",
    # Attaching the cluster's user-assigned identity to the VMs it creates.
    "Managed Identity Operator": "f1a07417-d97a-45cb-824c-7a7467783830",
}
BROAD_ROLES = {
    "Owner": "everything, role assignments included",
    "Contributor": "every resource in the resource group",
    "User Access Administrator": "role assignments",
    "Network Contributor": "network security groups too: the head could open its own firewall",
}
# The share's root squash probe in initialization_commands (its message on failure).
ROOT_SQUASH_PROBE = "root squash is off on the NFS share"
_VERSION = re.compile(r"^\d+(\.\d+){1,3}$")


def _provider(config: dict[str, Any]) -> dict[str, Any]:
    return config.get("provider") or {}


def ssh_source_errors(config: dict[str, Any]) -> list[str]:
    ranges = _provider(config).get("ssh_source_ranges")
    if isinstance(ranges, str):
        ranges = [ranges]
    if not ranges:
        return ["provider.ssh_source_ranges is required: the address ranges SSH (port 22) may come from, "
                "e.g. [\"203.0.113.7/32\"] for your own public address"]  # fmt: skip
    errors = []
    for value in ranges:
        text = str(value).strip()
        if PLACEHOLDER in text:
            errors.append(f"provider.ssh_source_ranges: {text!r} is the placeholder; set the address ranges SSH may "
                          "come from, e.g. your public address as 203.0.113.7/32 (curl -s https://ifconfig.me)")  # fmt: skip
            continue
        if text.lower() in ANY_SOURCE:
            errors.append(f"provider.ssh_source_ranges: {text!r} lets SSH in from any address; name your own range")
            continue
        try:
            net = ipaddress.ip_network(text, strict=False)
        except ValueError:
            errors.append(f"provider.ssh_source_ranges: {text!r} is not an address or CIDR range (e.g. 203.0.113.7/32)")
            continue
        if net.prefixlen == 0:
            errors.append(f"provider.ssh_source_ranges: {text!r} lets SSH in from any address; name your own range")
        elif net.prefixlen < (8 if net.version == 4 else 32):
            errors.append(f"provider.ssh_source_ranges: {text!r} is wider than a /{8 if net.version == 4 else 32}; "
                          "name the range you connect from")  # fmt: skip
    return errors


def public_ip_errors(config: dict[str, Any]) -> list[str]:
    provider, errors = _provider(config), []
    if provider.get("use_internal_ips") is not True:
        errors.append("provider.use_internal_ips must be true: otherwise every worker gets a public IP address")
    if provider.get("use_external_head_ip") is not True:
        errors.append("provider.use_external_head_ip must be true with use_internal_ips: the head keeps the public "
                      "address the launcher reaches over SSH (without it `ray up` cannot reach the head)")  # fmt: skip
    return errors


def image_errors(config: dict[str, Any]) -> list[str]:
    errors = []
    for name, node_type in (config.get("available_node_types") or {}).items():
        arm = (node_type.get("node_config") or {}).get("azure_arm_parameters") or {}
        if arm.get("imageId"):
            continue
        version = str(arm.get("imageVersion", ""))
        if not _VERSION.match(version):
            errors.append(f"{name}: imageVersion {version or '(unset)'!r} is not a pinned version: 'latest' moves under "
                          "the cluster; give one, e.g. 25.06.18 (az vm image list --publisher microsoft-dsvm "
                          "--offer ubuntu-2204 --sku 2204-gen2 --all -o table)")  # fmt: skip
    return errors


def role_errors(config: dict[str, Any]) -> list[str]:
    roles = _provider(config).get("identity_roles")
    if not roles:
        return ["provider.identity_roles is required: " + ", ".join(IDENTITY_ROLES)
                + " (without it Ray's template makes the cluster's identity Contributor on the resource group)"]  # fmt: skip
    errors = []
    for role in roles:
        if role in BROAD_ROLES:
            errors.append(f"provider.identity_roles: {role} is broader than the autoscaler needs "
                          f"({BROAD_ROLES[role]}); use {' + '.join(IDENTITY_ROLES)}")  # fmt: skip
        elif role not in IDENTITY_ROLES:
            errors.append(f"provider.identity_roles: {role!r} is not one of {', '.join(IDENTITY_ROLES)}")
    for role in IDENTITY_ROLES:
        if role not in roles:
            errors.append(f"provider.identity_roles: {role} is missing; the autoscaler needs it to start workers")
    return errors


def root_squash_errors(config: dict[str, Any]) -> list[str]:
    init = " ".join(config.get("initialization_commands") or [])
    if "mount -t nfs" in init and ROOT_SQUASH_PROBE not in init:
        return ["initialization_commands mount the NFS share without the root squash probe "
                f"({ROOT_SQUASH_PROBE!r}): a share with root squash off lets root on any node rewrite every file"]  # fmt: skip
    return []


def security_errors(config: dict[str, Any]) -> list[str]:
    """Every problem above; empty when the config makes the safe choices."""
    return [*ssh_source_errors(config), *public_ip_errors(config), *image_errors(config), *role_errors(config),
            *root_squash_errors(config)]  # fmt: skip


def _vm_sizes():
    spec = importlib.util.spec_from_file_location("bv_vm_sizes", Path(__file__).with_name("vm_sizes.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(spec.name, module)  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def errors(config: dict[str, Any]) -> list[str]:
    """VM sizes (cluster/vm_sizes.py) and security: everything to fix before `ray up`."""
    return [*_vm_sizes().size_errors(config), *security_errors(config)]


def main(argv: list[str]) -> int:
    import yaml

    path = argv[0] if argv else "cluster/azure.yaml"
    with open(path) as f:
        config = yaml.safe_load(f)
    problems = errors(config)
    for problem in problems:
        print(f"{path}: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
