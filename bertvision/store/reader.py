"""Reading a complete store: whole, streamed shard by shard, or one example; every shard read is
checked (Parquet structure, schema, sha256 against the manifest, finite values)."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from bertvision.errors import ConfigError, DataError
from bertvision.store.layouts import Shard, finite_problem, join, layout_of, require_finite
from bertvision.store.manifest import complete_manifest, read_manifest
from bertvision.store.spec import is_positive_int
from bertvision.store.writer import check_unique, file_sha256, read_ids

if TYPE_CHECKING:
    import torch

MISSING_SHARD = "missing shard; the store is damaged: delete the folder and rerun the embed command"
UNREADABLE = "not a readable Parquet file (truncated or corrupt?)"


@dataclass(frozen=True)
class EmbeddingSplit:
    """A whole vectors store (cls/mean) in memory: ids, hidden (N, L, H) float16, labels (N,)
    or None, the fine-tuned encoder's outputs (N, C) float32 or None."""

    ids: list[str]
    hidden: torch.Tensor
    labels: torch.Tensor | None
    manifest: dict[str, Any] = field(repr=False)
    path: Path
    encoder_logits: np.ndarray | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.ids)


@dataclass(frozen=True)
class TokenSplit:
    """A token store (or one shard of it) in memory, every row's tokens flat, no padding: row i
    is ``hidden[row_starts[i]:row_starts[i + 1]]`` ((sum T, L, H) float16).

    Windows: `example_ids` the question of each window, `offsets` (sum T, 2) character offsets,
    `labels` (n, 2) start/end positions, `encoder_logits` (sum T, 2). Sentence token stores:
    `example_ids` the ids, `segments` (sum T,) each token's sentence, `offsets` None, `labels`
    (n,) and `encoder_logits` (n, C) per example.
    """

    ids: list[str]
    example_ids: list[str]
    hidden: torch.Tensor
    row_starts: np.ndarray
    offsets: np.ndarray | None
    labels: torch.Tensor | None
    encoder_logits: np.ndarray | None
    manifest: dict[str, Any] = field(repr=False)
    path: Path
    segments: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.ids)

    def lengths(self) -> np.ndarray:
        """(n,) int64: each row's number of tokens T."""
        return np.diff(self.row_starts)

    def window(self, i: int) -> dict[str, Any]:
        """Row `i` (negative counts from the end): its id, example_id, hidden (T, L, H) (a
        view), label, encoder_logits, and offsets (windows) or segments (sentences)."""
        k = range(len(self.ids))[i]  # IndexError out of range, like a list
        a, b = int(self.row_starts[k]), int(self.row_starts[k + 1])
        logits, sentences = self.encoder_logits, self.segments is not None
        extra = {"segments": self.segments[a:b]} if sentences else {"offsets": self.offsets[a:b]}
        return {"id": self.ids[k], "example_id": self.example_ids[k], "hidden": self.hidden[a:b], **extra,
                "label": None if self.labels is None else self.labels[k],
                "encoder_logits": None if logits is None else logits[k] if sentences else logits[a:b]}  # fmt: skip


def _writable(a: np.ndarray) -> np.ndarray:
    # Arrow's buffers are read-only, and torch warns on (and must not write to) those.
    return a if a.flags.writeable else a.copy()


def to_split(shard: Shard, manifest: dict, folder: Path) -> EmbeddingSplit | TokenSplit:
    import torch

    v = {k: (_writable(x) if isinstance(x, np.ndarray) else x) for k, x in shard.values.items()}
    labels = None if v.get("label") is None else torch.from_numpy(v["label"])
    if shard.row_starts is None:
        return EmbeddingSplit(v["id"], torch.from_numpy(v["hidden"]), labels, manifest, folder, v.get("encoder_logits"))
    return TokenSplit(v["id"], v.get("example_id", v["id"]), torch.from_numpy(v["hidden"]), shard.row_starts,
                      v.get("offsets"), labels, v.get("encoder_logits"), manifest, folder, v.get("segments"))  # fmt: skip


# --------------------------------------------------------------------------- one shard


def check_footer(file: Path, manifest: Mapping[str, Any], expected_rows: int) -> None:
    """A shard's rows and column types (so every value's shape) checked against the manifest
    from its Parquet footer alone, before anything is read or allocated from the manifest's
    sizes (a manifest edited to other sizes is refused here)."""
    if not file.is_file():
        raise DataError(file, MISSING_SHARD)
    try:
        footer = pq.read_metadata(file)
        schema = footer.schema.to_arrow_schema()
    except (OSError, pa.ArrowException) as exc:
        raise DataError(file, f"{UNREADABLE}: {exc}") from None
    if footer.num_rows != expected_rows:
        raise DataError(file, f"expected {expected_rows} rows, found {footer.num_rows}")
    layout_of(manifest).check_schema(file, schema, manifest)


def read_shard(file: Path, manifest: Mapping[str, Any], expected_rows: int) -> Shard:
    """One shard, checked against the manifest: rows and columns (`check_footer`), nulls, token
    counts, value rules."""
    check_footer(file, manifest, expected_rows)
    try:
        table = pq.read_table(file)
    except (OSError, pa.ArrowException) as exc:
        raise DataError(file, f"{UNREADABLE}: {exc}") from None
    return layout_of(manifest).read(file, table, manifest)


# (file, inode, size, mtime_ns, manifest sha256) of the shards this process has checked.
_CHECKED: set[tuple] = set()


def read_entry(folder: Path, manifest: Mapping[str, Any], entry: Mapping[str, Any], *, again: bool = False) -> Shard:
    """Read the shard of one manifest entry and check it: its structure (`read_shard`), its
    sha256 against the manifest's, finite values. Every read of a complete store comes here.

    The checks cost about half as much again as the read (benchmarks/checked_reads.py), so a
    shard this process checked is not checked again while its file is unchanged (inode, size,
    mtime): a head streaming a token store pays in its first epoch only. ``again`` checks
    regardless (`verify`)."""
    file = folder / entry["file"]
    try:
        info = os.stat(file)
    except FileNotFoundError:
        raise DataError(file, MISSING_SHARD) from None
    except OSError as exc:
        raise DataError(file, f"cannot read: {exc.strerror or exc}") from None
    key = (str(file.resolve()), info.st_ino, info.st_size, info.st_mtime_ns, entry["sha256"])
    shard = read_shard(file, manifest, entry["rows"])
    if key in _CHECKED and not again:
        return shard
    try:
        sha = file_sha256(file)
    except OSError as exc:
        raise DataError(file, f"cannot read: {exc.strerror or exc}") from None
    if sha != entry["sha256"]:
        raise DataError(file, f"sha256 checksum mismatch: manifest {entry['sha256']}, file {sha}; the file was "
                        "changed or damaged ('bertvision store verify' checks a whole store): re-embed it")  # fmt: skip
    for c in layout_of(manifest).columns(manifest):
        if c.finite:
            require_finite(file, finite_problem(c).split(" (")[0], shard.values[c.name], shard.ids,
                           shard.row_starts if c.per_token else None)  # fmt: skip
    _CHECKED.add(key)
    return shard


def _in_order(folder: Path, manifest: Mapping[str, Any], rng: np.random.Generator, shuffle: bool,
              part: tuple[int, int] | None = None) -> Iterator[Shard]:  # fmt: skip
    """The store's shards, read and checked one at a time; in a random order with `shuffle`;
    with ``part = (k, n)`` every ``n``-th of that order from the ``k``-th only."""
    entries = manifest["shards"]
    order = rng.permutation(len(entries)) if shuffle else np.arange(len(entries))
    if part is not None:
        k, n = part
        if n < 1 or not 0 <= k < n:
            raise ConfigError(f"part {k} of {n}: not a valid share of a store's shards")
        order = order[k::n]
    for k in order:
        yield read_entry(folder, manifest, entries[int(k)])


# --------------------------------------------------------------------------- whole stores


def load_split(path: str | os.PathLike, *, verify: bool = False) -> EmbeddingSplit | TokenSplit:
    """A whole complete store in memory: an `EmbeddingSplit` (cls/mean) or a `TokenSplit`,
    allocated once and filled shard by shard (peak memory: the result plus one shard).
    ``verify`` runs `verify` first."""
    folder = Path(path)
    manifest = complete_manifest(folder)
    if verify:
        _verify(folder)
    layout = layout_of(manifest)
    columns = layout.columns(manifest)
    entries, rows = manifest["shards"], manifest["rows"]
    # The manifest's sizes checked against every shard before anything is allocated from them.
    for e in entries:
        check_footer(folder / e["file"], manifest, e["rows"])
    counts = [_token_count(folder / e["file"], manifest, e["rows"]) for e in entries] if layout.per_token else None
    sizes = {True: sum(counts) if counts else 0, False: rows}
    values: dict[str, Any] = {c.name: [] if c.dtype is None else np.empty((sizes[c.per_token], *c.shape), c.dtype)
                              for c in columns}  # fmt: skip
    row_starts = np.zeros(rows + 1, dtype=np.int64) if layout.per_token else None
    row = token = 0
    for k, entry in enumerate(entries):
        shard = read_entry(folder, manifest, entry)
        n, t = len(shard), int(shard.row_starts[-1]) if row_starts is not None else 0
        if counts is not None and t != counts[k]:
            raise DataError(folder / entry["file"], "changed while being read; read the store again")
        for c in columns:
            if c.dtype is None:
                values[c.name].extend(shard.values[c.name])
            else:
                at = slice(token, token + t) if c.per_token else slice(row, row + n)
                values[c.name][at] = shard.values[c.name]
        if row_starts is not None:
            row_starts[row + 1 : row + n + 1] = token + shard.row_starts[1:]
        row, token = row + n, token + t
    return to_split(Shard(values, row_starts, frozenset(c.name for c in columns if c.per_token)), manifest, folder)


def _token_count(file: Path, manifest: Mapping[str, Any], rows: int) -> int:
    """The number of tokens in a shard, from its small offsets (or segments) column alone."""
    name = layout_of(manifest).count_column(manifest)
    try:
        column = pq.read_table(file, columns=[name]).column(name)
        return sum(len(chunk.flatten()) for chunk in column.chunks)
    except (OSError, pa.ArrowException):
        # Unreadable or malformed: the full read says which, naming the file.
        return int(read_shard(file, manifest, rows).row_starts[-1])


def iter_token_shards(path: str | os.PathLike, *, shuffle: bool = False, seed: int = 0,
                      part: tuple[int, int] | None = None) -> Iterator[TokenSplit]:  # fmt: skip
    """A complete token store shard by shard (one in memory at a time), each a `TokenSplit`.
    With `shuffle`, shards come in a random order and rows are shuffled within each (a row's
    tokens together), reproducibly for `seed`; ``part = (k, n)``: every n-th shard of that order
    from the k-th only (one training rank's)."""
    folder = Path(path)
    manifest = complete_manifest(folder)
    if not layout_of(manifest).per_token:
        raise ConfigError(f"{folder}: selection {manifest['selection']!r} stores one vector per layer and example; "
                          "stream it with iter_batches (iter_token_shards reads token stores)")  # fmt: skip

    def shards() -> Iterator[TokenSplit]:
        rng = np.random.default_rng(seed)
        for shard in _in_order(folder, manifest, rng, shuffle, part):
            yield to_split(shard.take(rng.permutation(len(shard))) if shuffle else shard, manifest, folder)

    return shards()


def iter_batches(path: str | os.PathLike, batch_size: int, *, shuffle: bool = False, seed: int = 0,
                 drop_last: bool = False) -> Iterator[tuple[list[str], torch.Tensor, torch.Tensor | None]]:  # fmt: skip
    """A complete vectors store in batches of (ids, hidden (b, L, H), labels or None), one shard
    in memory at a time; batches run across shards. With `shuffle`, shards come in a random
    order and rows are shuffled within each: not a global shuffle, but enough for heads."""
    if not is_positive_int(batch_size):
        raise ConfigError(f"batch_size: expected a positive integer, got {batch_size!r}")
    folder = Path(path)
    manifest = complete_manifest(folder)
    if layout_of(manifest).per_token:
        raise ConfigError(f"{folder}: a token store (selection 'tokens') has rows of different lengths; "
                          "stream it shard by shard with iter_token_shards")  # fmt: skip
    rng = np.random.default_rng(seed)
    held, count = [], 0  # pieces of the next batch
    for shard in _in_order(folder, manifest, rng, shuffle):
        if shuffle:
            shard = shard.take(rng.permutation(len(shard)))
        start = 0
        while start < len(shard):
            take = min(batch_size - count, len(shard) - start)
            held.append(shard.take(slice(start, start + take)))
            start, count = start + take, count + take
            if count == batch_size:
                yield _batch(join(held))
                held, count = [], 0
    if count and not drop_last:
        yield _batch(join(held))


def _batch(shard: Shard):
    import torch

    labels = shard.get("label")
    return (shard.ids, torch.from_numpy(_writable(shard.values["hidden"])),
            None if labels is None else torch.from_numpy(_writable(labels)))  # fmt: skip


# --------------------------------------------------------------------------- checks, examples


def verify(path: str | os.PathLike) -> dict[str, Any]:
    """Check a store end to end (every read's checks, plus each shard's first/last id and ids
    unique across shards); a DataError names the first problem. Returns {"rows", "shards",
    "bytes", "bytes_per_row"} (token stores: and "tokens", "bytes_per_token")."""
    return _verify(path)


def _verify(path: str | os.PathLike) -> dict[str, Any]:
    # A second name, because load_split's `verify` argument hides this function there.
    folder = Path(path)
    manifest = complete_manifest(folder)
    seen: dict[str, str] = {}
    total_bytes = tokens = 0
    for entry in manifest["shards"]:
        file = folder / entry["file"]
        shard = read_entry(folder, manifest, entry, again=True)
        total_bytes += file.stat().st_size
        if (shard.ids[0], shard.ids[-1]) != (entry["first_id"], entry["last_id"]):
            raise DataError(file, f"first/last id {shard.ids[0]!r}/{shard.ids[-1]!r} differ from the manifest's "
                            f"{entry['first_id']!r}/{entry['last_id']!r}")  # fmt: skip
        check_unique(file, shard.ids, seen)
        tokens += 0 if shard.row_starts is None else int(shard.row_starts[-1])
    rows = manifest["rows"]
    report = {"rows": rows, "shards": len(manifest["shards"]), "bytes": total_bytes,
              "bytes_per_row": total_bytes / rows if rows else 0.0}  # fmt: skip
    if layout_of(manifest).per_token:
        report.update(tokens=tokens, bytes_per_token=total_bytes / tokens if tokens else 0.0)
    return report


def check_compatible(store: str | os.PathLike | EmbeddingSplit | TokenSplit | Mapping[str, Any], *,
                     num_hidden_states: int | None = None, hidden_size: int | None = None,
                     encoder: str | Mapping[str, Any] | Any | None = None, checkpoint: Any = ...) -> None:  # fmt: skip
    """ConfigError unless a store (a folder, a loaded split or a manifest) fits a head: its shape
    [L, H], the encoder (a name, {name, revision} or an `EncoderInfo`) and the checkpoint that
    made it. What is left None (the checkpoint: left out) is not compared."""
    if isinstance(store, (EmbeddingSplit, TokenSplit)):
        manifest, where = store.manifest, str(store.path)
    elif isinstance(store, Mapping):
        manifest, where = store, f"for {store.get('task')}/{store.get('split')}"
    else:
        manifest, where = read_manifest(store), str(Path(store))
    problems = [f"{name}: expected {want}, found {manifest[name]}"
                for name, want in (("num_hidden_states", num_hidden_states), ("hidden_size", hidden_size))
                if want is not None and manifest[name] != want]  # fmt: skip
    if encoder is not None:
        if isinstance(encoder, str):
            name, revision = encoder, None
        elif isinstance(encoder, Mapping):
            name, revision = encoder["name"], encoder.get("revision")
        else:
            name, revision = encoder.name, getattr(encoder, "revision", None)
        found = manifest["encoder"]
        if found["name"] != name or (revision is not None and found["revision"] != revision):
            want = name if revision is None else f"{name}@{revision}"
            problems.append(f"encoder: expected {want}, found {found['name']}@{found['revision']}")
    if checkpoint is not ... and manifest.get("checkpoint") != checkpoint:
        problems.append(f"made from checkpoint {manifest.get('checkpoint')!r}, but the head is trained on {checkpoint!r}")
    if problems:
        raise ConfigError(f"store {where} does not fit: {'; '.join(problems)}")


def read_example(path: str | os.PathLike, example_id: str) -> dict[str, Any] | None:
    """One row of a complete store ({"id", "hidden", "label", "segments"}), or None; only the
    shard holding it is read."""
    folder = Path(path)
    manifest = complete_manifest(folder)
    for entry in manifest["shards"]:
        ids = read_ids(folder / entry["file"])
        if example_id in ids:
            shard = read_entry(folder, manifest, entry).take([ids.index(example_id)])
            label, segments = shard.get("label"), shard.get("segments")
            hidden = shard.values["hidden"] if shard.row_starts is not None else shard.values["hidden"][0]
            return {"id": example_id, "hidden": hidden, "label": None if label is None else label[0], "segments": segments}
    return None


def first_ids(path: str | os.PathLike, n: int) -> list[str]:
    """The first ``n`` ids of a complete store, in order (from its first shards' id columns)."""
    folder = Path(path)
    out: list[str] = []
    for entry in complete_manifest(folder)["shards"]:
        out.extend(read_ids(folder / entry["file"]))
        if len(out) >= n:
            break
    return out[:n]
