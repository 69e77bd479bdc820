"""The embedding store: every layer's hidden states of one split, written once, read many times.

One folder holds one (task, encoder, checkpoint, split)::

    _manifest.json            what is stored (`StoreSpec`), how far writing got, each shard's
                              rows, sha256 and first/last id (`manifest`)
    shard-00000.parquet       rows [0, shard_rows) of the split, in the split's order
    shard-00001.parquet       ...

A shard's columns depend on the store's layout (`layouts`: one vector per layer and example,
every token of a span task's windows, or every token of a sentence task's examples); pyarrow
alone reads any of them back (hidden states are Arrow's ``arrow.fixed_shape_tensor``). Shards are
written under a temporary name and renamed (`writer`), so a killed run leaves only whole shards
and a rerun writes the missing ones; every read checks what it reads (`reader`).
"""

from bertvision.store.layouts import LAYOUTS, Layout, layout_of
from bertvision.store.manifest import (
    MANIFEST_NAME,
    complete_manifest,
    has_manifest,
    is_complete,
    manifest_path,
    read_manifest,
    split_folders,
    store_bytes,
)
from bertvision.store.reader import (
    EmbeddingSplit,
    TokenSplit,
    check_compatible,
    first_ids,
    iter_batches,
    iter_token_shards,
    load_split,
    read_entry,
    read_example,
    read_shard,
    verify,
)
from bertvision.store.spec import StoreSpec, shard_file, suggest_shard_rows, suggest_window_rows
from bertvision.store.writer import StoreWriter, encode_parquet, file_sha256

__all__ = [
    "LAYOUTS", "MANIFEST_NAME", "EmbeddingSplit", "Layout", "StoreSpec", "StoreWriter", "TokenSplit",
    "check_compatible", "complete_manifest", "encode_parquet", "file_sha256", "first_ids", "has_manifest",
    "is_complete", "iter_batches", "iter_token_shards", "layout_of", "load_split", "manifest_path", "read_entry",
    "read_example", "read_manifest", "read_shard", "shard_file", "split_folders", "store_bytes", "suggest_shard_rows",
    "suggest_window_rows", "verify",
]  # fmt: skip
