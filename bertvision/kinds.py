"""Which head kind a store or a trained head is: the registry the kinds plug into. A new kind is
one class (a `bertvision.heads.HeadKind`) and an entry in these tables."""

from __future__ import annotations

from pathlib import Path

from bertvision import store as st
from bertvision.errors import ConfigError, DataError
from bertvision.sentences.heads import SentenceHeads, SentenceTokenHeads
from bertvision.spans.heads import SpanHeads

# Task kind (a task spec's ``kind``, a head config's ``task_kind``) -> head kind; TOKEN_KINDS: on
# sentence token stores (a head config's ``token_states``); BY_LAYOUT: by (task kind, store layout).
KINDS = {"classification": SentenceHeads("classification", probabilities=True),
         "regression": SentenceHeads("regression"), "span": SpanHeads()}  # fmt: skip
TOKEN_KINDS = {"classification": SentenceTokenHeads("classification", probabilities=True),
               "regression": SentenceTokenHeads("regression")}  # fmt: skip
BY_LAYOUT = {(k.name, k.layout): k for k in (*KINDS.values(), *TOKEN_KINDS.values())}


def store_kind(root: str | Path):
    """(kind, train manifest, task spec) of a store folder, from STORE/train's manifest."""
    root = Path(root)
    if not (root / "train").is_dir():
        raise DataError(root, "no 'train' split in this store; run 'bertvision embed' with --splits train ...")
    manifest = st.read_manifest(root / "train")
    spec = manifest.get("extra", {}).get("task_spec")
    if not spec:
        raise DataError(st.manifest_path(root / "train"), "manifest has no task_spec; re-embed with this version")
    kind = BY_LAYOUT.get((spec["kind"], st.layout_of(manifest).name))
    if kind is None:
        raise ConfigError(f"{root / 'train'}: a {manifest.get('selection')!r} store of a {spec['kind']} task; "
                          "span heads need windows of tokens, sentence heads 'cls', 'mean' or sentence tokens")  # fmt: skip
    return kind, manifest, spec


def head_kind(meta: dict):
    """The kind of a trained head, from its head_config.json (`bertvision.train.read_head_config`)."""
    config = meta["adapter_pooler"]
    return (TOKEN_KINDS if config.get("token_states") else KINDS)[config.get("task_kind", "classification")]
