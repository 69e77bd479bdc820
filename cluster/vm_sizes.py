"""The Azure VM sizes this project's cluster config may use, and an offline check of a config.

Ray's validator (``ray.autoscaler._private.util.validate_config``) checks the config's shape
only: a misspelt ``vmSize`` such as ``Standard_NC6s_v9`` passes it and fails minutes into
``ray up``. ``size_errors`` catches that, and a node type whose declared ``resources`` do not
match the VM (Ray schedules by what is declared, not by what the VM has).

    python cluster/check.py [cluster/azure.yaml]     # these and the security checks; exit 1 if any

Figures from Microsoft's size pages (vCPUs, memory, GPUs). Nothing here contacts Azure.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

NCV3_RETIRED = "2025-09-30"  # Microsoft retired the NCv3 (V100) series on this date.


@dataclass(frozen=True)
class VMSize:
    vcpus: int
    memory_gib: int
    gpus: int = 0
    gpu_model: str = ""
    gpu_memory_gb: int = 0
    retired: str = ""  # ISO date when Azure retired the series, "" if current


# The one list: add a size here before using it in cluster/azure.yaml.
SUPPORTED_VM_SIZES: dict[str, VMSize] = {
    # CPU heads (Dsv5).
    "Standard_D4s_v5": VMSize(vcpus=4, memory_gib=16),
    "Standard_D8s_v5": VMSize(vcpus=8, memory_gib=32),
    "Standard_D16s_v5": VMSize(vcpus=16, memory_gib=64),
    # V100 16 GB (NCv3), retired 30 Sept 2025.
    "Standard_NC6s_v3": VMSize(6, 112, 1, "V100", 16, NCV3_RETIRED),
    "Standard_NC12s_v3": VMSize(12, 224, 2, "V100", 16, NCV3_RETIRED),
    "Standard_NC24s_v3": VMSize(24, 448, 4, "V100", 16, NCV3_RETIRED),
    # A100 80 GB PCIe (NC A100 v4), the suggested NCv3 successor.
    "Standard_NC24ads_A100_v4": VMSize(24, 220, 1, "A100", 80),
    "Standard_NC48ads_A100_v4": VMSize(48, 440, 2, "A100", 80),
    "Standard_NC96ads_A100_v4": VMSize(96, 880, 4, "A100", 80),
}


def size_errors(config: dict[str, Any]) -> list[str]:
    """Problems with the node types' VM sizes in a cluster config; empty when all is well.

    Every node type must name a supported ``vmSize``, declare ``resources`` whose GPU count is
    the VM's (0 for CPU sizes) and whose CPU count does not exceed the VM's vCPUs; the head
    node type must be a CPU size.
    """
    errors = []
    node_types = config.get("available_node_types") or {}
    for name, node_type in node_types.items():
        params = (node_type.get("node_config") or {}).get("azure_arm_parameters") or {}
        vm_size = params.get("vmSize")
        size = SUPPORTED_VM_SIZES.get(vm_size)
        if size is None:
            errors.append(
                f"{name}: vmSize {vm_size!r} is not in SUPPORTED_VM_SIZES "
                f"(cluster/vm_sizes.py): {', '.join(sorted(SUPPORTED_VM_SIZES))}"
            )
            continue
        resources = node_type.get("resources") or {}
        gpus = resources.get("GPU", 0)
        if gpus != size.gpus:
            errors.append(f"{name}: resources GPU={gpus} but {vm_size} has {size.gpus} GPU(s)")
        cpus = resources.get("CPU")
        if cpus is None or cpus > size.vcpus:
            errors.append(f"{name}: resources CPU={cpus} but {vm_size} has {size.vcpus} vCPUs")
        if name == config.get("head_node_type") and size.gpus:
            errors.append(f"{name}: the head node type should be a CPU size, not {vm_size}")
    return errors
