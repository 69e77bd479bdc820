"""Fingerprints of a run's inputs, so a rerun notices data changed under unchanged settings:
`split_fingerprint` (a task split's content, in order: a store's ``source_sha256``, a fine-tuning
run's config.json) and `store_fingerprint` (a complete store's manifest: a head run's config.json).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any


def _hasher():
    h = hashlib.sha256()

    def add(obj: Any) -> None:
        # Length-prefixed JSON pieces: ("ab", "c") and ("a", "bc") hash differently.
        data = json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)

    return h, add


def split_fingerprint(data) -> str:
    """sha256 of a loaded split's content (a `SentenceSplit` or a `SquadSplit`), in order."""
    h, add = _hasher()
    add(data.split)
    if hasattr(data, "examples"):  # SQuAD: every field a window or a score depends on
        for ex in data.examples:
            add([ex.id, ex.title, ex.context, ex.question, ex.is_impossible,
                 [[a.text, a.start] for a in ex.answers], [[a.text, a.start] for a in ex.plausible_answers]])  # fmt: skip
    else:
        for column in (data.ids, *data.texts):
            add(list(column))
        add(None if data.labels is None else data.labels.tolist())
    return h.hexdigest()


def splits_fingerprint(splits: dict) -> dict[str, str]:
    """{split name: fingerprint} of loaded splits."""
    return {name: split_fingerprint(data) for name, data in splits.items()}


def store_fingerprint(path: str | os.PathLike | dict) -> str:
    """sha256 of a complete store's manifest content: its spec and every shard's checksum
    (not the creation time or throughput facts, which a byte-identical rerun changes)."""
    from bertvision.store import complete_manifest

    manifest = path if isinstance(path, dict) else complete_manifest(Path(path))
    h, add = _hasher()
    skip = ("created", "code_version", "extra", "status")
    add({k: v for k, v in manifest.items() if k not in skip and k != "shards"})
    add([[e["file"], e["rows"], e["sha256"]] for e in manifest["shards"]])
    return h.hexdigest()


def differing(old: dict, new: dict) -> list[str]:
    """The names whose fingerprints differ (or that only one side has)."""
    return sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
