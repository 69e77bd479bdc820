"""The store of another revision (the single-module `bertvision/store.py` of main 99cb8ff, read
through `git show`) against this tree's, in one process: the same rows written by both (the
shards must be byte-identical) and read back with `load_split`, alternating, best and median
of N rounds (docs/BENCHMARKS.md, "The store package").

    python benchmarks/store_versions.py runs/demo/store/cls/train [--rev 99cb8ff] [--rounds 5]

STORE_SPLIT may be of any layout (cls/mean, sentence tokens, span windows); its rows are what
both versions write.
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import bertvision.store as new


def old_store(rev: str):
    """The module bertvision/store.py of revision ``rev``, loaded from its text."""
    text = subprocess.run(["git", "show", f"{rev}:bertvision/store.py"], capture_output=True, text=True,
                          check=True, cwd=Path(__file__).resolve().parents[1]).stdout  # fmt: skip
    path = Path(tempfile.mkdtemp()) / "old_store.py"
    path.write_text(text)
    spec = importlib.util.spec_from_file_location("old_store", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["old_store"] = module
    spec.loader.exec_module(module)
    return module


def rows_of(split) -> tuple[list, object, object, dict]:
    """(ids, hidden, labels, the other write_shard inputs) of a loaded store split."""
    labels = None if split.labels is None else split.labels.numpy()
    if not hasattr(split, "row_starts"):
        extra = {} if split.encoder_logits is None else {"encoder_logits": split.encoder_logits}
        return split.ids, split.hidden.numpy(), labels, extra
    rows = [split.window(i) for i in range(len(split))]
    sentences = split.segments is not None
    extra = {"segments": [r["segments"] for r in rows]} if sentences else {
        "example_ids": split.example_ids, "offsets": [r["offsets"] for r in rows]}  # fmt: skip
    if split.encoder_logits is not None:
        extra["encoder_logits"] = split.encoder_logits if sentences else [r["encoder_logits"] for r in rows]
    return split.ids, [r["hidden"].numpy() for r in rows], labels, extra


def write(module, folder: Path, manifest: dict, ids, hidden, labels, extra) -> None:
    writer = module.StoreWriter(folder, module.StoreSpec.from_dict(manifest), len(ids))
    for k in writer.pending_shards():
        a, b = writer.shard_range(k)
        writer.write_shard(k, ids[a:b], hidden[a:b], None if labels is None else labels[a:b],
                           **{key: v[a:b] for key, v in extra.items()})  # fmt: skip
    writer.finish()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("store", type=Path, help="a complete store split folder")
    p.add_argument("--rev", default="99cb8ff", help="the revision whose bertvision/store.py is compared")
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args()
    old = old_store(args.rev)
    ref = new.load_split(args.store)
    manifest, data = new.read_manifest(args.store), rows_of(ref)
    megabytes = ref.hidden.numpy().nbytes / 2**20
    times: dict[str, list[float]] = {f"{v} {op}": [] for op in ("write", "read") for v in ("old", "new")}
    tmp = Path(tempfile.mkdtemp())
    try:
        for r in range(args.rounds):
            for name, module, checked in (("old", old, old._CHECKED), ("new", new, new.reader._CHECKED)):
                folder = tmp / f"{name}-{r}"
                t0 = time.perf_counter()
                write(module, folder, manifest, *data)
                times[f"{name} write"].append(time.perf_counter() - t0)
                checked.clear()  # as a new process reads: every shard checked
                t0 = time.perf_counter()
                split = module.load_split(folder)
                times[f"{name} read"].append(time.perf_counter() - t0)
                assert split.ids == ref.ids and np.array_equal(split.hidden.numpy(), ref.hidden.numpy())
            shas = [[e["sha256"] for e in new.read_manifest(tmp / f"{v}-{r}")["shards"]] for v in ("old", "new")]
            assert shas[0] == shas[1], "the two versions wrote different shards"
    finally:
        shutil.rmtree(tmp)
    print(f"{args.store}: {len(ref)} rows, {megabytes:.1f} MB of states, {manifest.get('token_layout') or manifest['selection']}; "
          "shards byte-identical")  # fmt: skip
    for key, values in times.items():
        print(f"  {key}: best {min(values):.3f} s ({megabytes / min(values):.0f} MB/s), median {statistics.median(values):.3f} s")


if __name__ == "__main__":
    main()
