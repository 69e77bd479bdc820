"""Token heads' training step, this tree against an earlier revision's code, in one process.

    .venv/bin/python benchmarks/token_batches.py --store runs/token-heads/sst2/pre-tokens \\
        --rev 62eb210 --json docs/bench/token_batches_sst2.json

Times building a batch (`TokenRows.batch`) and the head's step (forward, backward, AdamW) over
the same ``--batches`` batches of 64 from STORE/train, for the code at ``--rev`` (its
``bertvision/kinds.py`` and ``bertvision/models/adapter_pooler.py``, read with ``git show``) and
for this tree's, alternating in ``--rounds`` rounds so that both see the same machine. One torch
thread. The old and new heads start from the same weights; their outputs (in eval mode) are
compared too.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from bertvision import store as st
from bertvision.io import atomic_write_json
from bertvision.models import adapter_pooler
from bertvision.sentences.heads import TokenRows


def old_module(rev: str, path: str, name: str):
    """``path`` as it was at ``rev``, imported as module ``name``."""
    source = subprocess.run(["git", "show", f"{rev}:{path}"], capture_output=True, text=True, check=True).stdout
    file = Path(tempfile.mkdtemp()) / f"{name}.py"
    file.write_text(source)
    spec = importlib.util.spec_from_file_location(name, file)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def steps(rows, heads, make, batches) -> tuple[float, float]:
    """Seconds building the batches and seconds of the head's steps."""
    torch.manual_seed(0)
    model = heads.TokenAdapterPooler(make(heads))
    optimizer = torch.optim.AdamW(model.parameters(), 1e-3)
    build = step = 0.0
    for idx in batches:
        t0 = time.perf_counter()
        x, mask, seg = rows.batch(idx)
        t1 = time.perf_counter()
        loss = model.loss(model(x, mask, seg), rows.labels[idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        build, step = build + t1 - t0, step + time.perf_counter() - t1
    return build, step


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--store", required=True, help="a sentence token store (reads STORE/train)")
    p.add_argument("--rev", default="62eb210", help="the earlier revision (default: before the gather and packing)")
    p.add_argument("--pooling", nargs="+", default=["attention", "flatten"])
    p.add_argument("--batches", type=int, default=30)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    torch.set_num_threads(1)
    old_kinds = old_module(args.rev, "bertvision/kinds.py", "old_kinds")
    old_heads = old_module(args.rev, "bertvision/models/adapter_pooler.py", "old_adapter_pooler")
    split = st.load_split(Path(args.store) / "train")
    variants = {"old": (old_kinds.TokenRows.from_split(split), old_heads),
                "new": (TokenRows.from_split(split), adapter_pooler)}  # fmt: skip
    rows = variants["new"][0]
    order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(0)).numpy()
    batches = [order[i : i + 64] for i in range(0, 64 * args.batches, 64)]
    segments = len(split.manifest["extra"]["task_spec"]["text_fields"])
    result = {"store": args.store, "rev": args.rev, "batches": args.batches, "rounds": args.rounds,
              "mean_tokens": float(rows.lengths.mean()), "max_tokens": int(rows.lengths.max()), "pooling": {}}  # fmt: skip
    for pooling in args.pooling:

        def make(heads, pooling=pooling):
            return heads.AdapterPoolerConfig(num_hidden_states=split.manifest["num_hidden_states"],
                                             hidden_size=split.manifest["hidden_size"], num_outputs=2, token_states=True,
                                             pooling=pooling, num_segments=segments)  # fmt: skip

        times = {name: {"build": [], "step": []} for name in variants}
        for _ in range(args.rounds):
            for name, (r, heads) in variants.items():
                build, step = steps(r, heads, make, batches)
                times[name]["build"].append(build)
                times[name]["step"].append(step)
        torch.manual_seed(0)
        new_head = adapter_pooler.TokenAdapterPooler(make(adapter_pooler)).eval()
        old_head = old_heads.TokenAdapterPooler(make(old_heads)).eval()
        old_head.load_state_dict(new_head.state_dict())
        with torch.no_grad():
            x, mask, seg = rows.batch(batches[0])
            same = torch.equal(new_head(x, mask, seg), old_head(x.float(), mask, seg))
        summary = {name: {k: statistics.median(v) for k, v in t.items()} for name, t in times.items()}
        summary["speedup"] = {k: summary["old"][k] / summary["new"][k] for k in ("build", "step")}
        summary["speedup"]["total"] = sum(summary["old"].values()) / sum(summary["new"].values())
        summary["outputs_equal"] = same
        result["pooling"][pooling] = summary
        print(pooling, json.dumps(summary), flush=True)
    if args.json:
        atomic_write_json(Path(args.json), result)


if __name__ == "__main__":
    main()
