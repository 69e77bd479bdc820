"""What checking every store read costs: shards read unchecked (Parquet structure and schema
only, as before the hardening issue) against checked (`store.read_entry`: also the sha256
against the manifest and finite values), and read again by the same process (checked once,
unchanged since: the checks are skipped), in one run on the same files.

    python benchmarks/checked_reads.py [--rows 20000] [--shard-rows 2048] [--repeats 5]

Builds a synthetic store of N(0, 1) float16 states shaped like the bundled encoder's (7 x 384,
the cls selection) in a temporary folder, then alternates the two readers over all shards
(unchecked, checked, unchecked, ...) and keeps the best of --repeats for each, so a noisy
neighbour hurts both alike. The files are in the page cache after the first pass: this is the
CPU cost of the checks, the worst case relative to a read from disk.
"""

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from bertvision import store as st


def build(folder: Path, rows: int, shard_rows: int) -> dict:
    spec = st.StoreSpec(task="synthetic", split="train", encoder_name="synthetic", encoder_revision="0",
                        checkpoint="pretrained", num_hidden_states=7, hidden_size=384, selection="cls",
                        max_length=128, label_kind="classification", shard_rows=shard_rows)  # fmt: skip
    writer = st.StoreWriter(folder, spec, rows)
    rng = np.random.default_rng(0)
    for k in writer.pending_shards():
        lo, hi = writer.shard_range(k)
        hidden = rng.standard_normal((hi - lo, 7, 384)).astype(np.float16)
        writer.write_shard(k, [str(i) for i in range(lo, hi)], hidden, rng.integers(0, 2, hi - lo))
    return writer.finish()


def read_all(folder: Path, manifest: dict, how: str) -> float:
    if how == "checked":
        st.reader._CHECKED.clear()  # as a new process would: check every shard
    t0 = time.perf_counter()
    for entry in manifest["shards"]:
        if how != "unchecked":
            st.read_entry(folder, manifest, entry)
        else:
            st.read_shard(folder / entry["file"], manifest, entry["rows"])
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=20000)
    p.add_argument("--shard-rows", type=int, default=2048)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "store"
        manifest = build(folder, args.rows, args.shard_rows)
        size = st.store_bytes(folder)
        read_all(folder, manifest, "unchecked")  # warm the page cache
        best = {"unchecked": float("inf"), "checked": float("inf"), "checked_again": float("inf")}
        for _ in range(args.repeats):
            for name in best:  # checked_again follows checked: the same process, files unchanged
                best[name] = min(best[name], read_all(folder, manifest, name))
    out = {
        "machine": f"{platform.machine()}, {__import__('os').cpu_count()} cores, Python {platform.python_version()}",
        "rows": args.rows, "shards": len(manifest["shards"]), "store_mib": round(size / 2**20, 1),
        **{f"{k}_seconds": round(v, 3) for k, v in best.items()},
        **{f"{k}_mib_per_s": round(size / 2**20 / v, 1) for k, v in best.items()},
        "checked_over_unchecked": round(best["checked"] / best["unchecked"], 2),
        "checked_again_over_unchecked": round(best["checked_again"] / best["unchecked"], 2),
    }  # fmt: skip
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
