"""Span heads' data: token stores of SQuAD windows in memory (`WindowSet`) and streamed for
training (`train_batches`: larger than memory too); fine-tuning's parts (`span_parts`)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bertvision import store as st
from bertvision.distributed import ONE, World
from bertvision.encoders import length_batches
from bertvision.errors import ConfigError, DataError
from bertvision.heads import same_source
from bertvision.tasks import get_task


@dataclass
class WindowSet:
    """Windows of one part (validation, test...) in memory, one array per window."""

    ids: list[str]
    example_ids: list[str]
    hidden: list  # torch (T, L, H) float16 each
    offsets: list[np.ndarray]  # (T, 2) int32 each
    labels: np.ndarray | None  # (n, 2)
    encoder_logits: list[np.ndarray] | None  # (T, 2) float32 each

    def __len__(self) -> int:
        return len(self.ids)

    def __getstate__(self) -> dict:
        # Each window's states are a view of its shard's tensor, and torch pickles a view with its
        # whole storage: a search sending the validation windows to its trials (Ray's object
        # store) once pickled the 1.3 GB validation store once per window and ran out of memory.
        # One tensor of every window's rows and the windows' lengths travel instead.
        import torch

        state = dict(self.__dict__)
        state["hidden"] = (torch.cat(list(self.hidden)) if self.hidden else None, [len(h) for h in self.hidden])
        return state

    def __setstate__(self, state: dict) -> None:
        import torch

        joined, lengths = state["hidden"]
        state["hidden"] = list(torch.split(joined, lengths)) if lengths else []
        self.__dict__.update(state)

    @classmethod
    def from_split(cls, split, keep: set[str] | None = None) -> WindowSet:
        """The windows of a `TokenSplit` (or one shard of it), those of questions in ``keep`` only."""
        rows = [i for i, q in enumerate(split.example_ids) if keep is None or q in keep]
        spans, logits = [slice(split.row_starts[i], split.row_starts[i + 1]) for i in rows], split.encoder_logits
        return cls([split.ids[i] for i in rows], [split.example_ids[i] for i in rows], [split.hidden[s] for s in spans],
                   [split.offsets[s] for s in spans],
                   None if split.labels is None else split.labels.numpy()[rows] if rows else np.zeros((0, 2), np.int64),
                   None if logits is None else [logits[s] for s in spans])  # fmt: skip

    def extend(self, other: WindowSet) -> None:
        self.ids += other.ids
        self.example_ids += other.example_ids
        self.hidden += other.hidden
        self.offsets += other.offsets
        if self.labels is not None and other.labels is not None:
            self.labels = np.concatenate([self.labels, other.labels])
        if self.encoder_logits is not None and other.encoder_logits is not None:
            self.encoder_logits += other.encoder_logits


def pad_batch(hidden: Sequence, device=None):
    """Windows (T_i, L, H) -> (B, T_max, L, H) float32 and a (B, T_max) mask of real tokens."""
    import torch

    width = max(len(h) for h in hidden)
    L, H = hidden[0].shape[1:]
    x = torch.zeros((len(hidden), width, L, H), dtype=torch.float32)
    mask = torch.zeros((len(hidden), width), dtype=torch.bool)
    for row, h in enumerate(hidden):
        x[row, : len(h)] = h
        mask[row, : len(h)] = True
    return x.to(device or "cpu"), mask.to(device or "cpu")


def head_logits(model, windows: WindowSet, device=None, batch_size: int = 64) -> tuple[list, list]:
    """Start and end logits of every window, (T,) float32 each (padding dropped)."""
    import torch

    lengths = np.array([len(h) for h in windows.hidden])
    starts, ends = [None] * len(windows), [None] * len(windows)
    model.eval()
    with torch.inference_mode():
        for idx in length_batches(lengths, batch_size):
            x, mask = pad_batch([windows.hidden[i] for i in idx], device)
            out = model(x, mask).float().cpu().numpy()
            for row, i in enumerate(idx):
                starts[i], ends[i] = out[row, : lengths[i], 0], out[row, : lengths[i], 1]
    return starts, ends


def span_parts(task, validation_fraction: float = 0.1, validation_seed: int = 0) -> dict:
    """{"train", "validation"} SquadSplits of a span task: its own validation split, else whole
    articles carved from train (seeded). Every span stage calls this with the same arguments."""
    from bertvision.tasks.squad import SquadSplit

    if "validation" in task.spec.splits:
        return {"train": task.load("train"), "validation": task.load("validation")}
    full = task.load("train")
    titles = sorted({ex.title for ex in full.examples})
    if len(titles) < 2:
        raise ConfigError(f"{full.source}: cannot carve a validation part from {len(titles)} article(s)")
    rng = np.random.default_rng(validation_seed)
    n_val = max(1, round(len(titles) * validation_fraction))
    held = {titles[i] for i in rng.permutation(len(titles))[:n_val]}
    parts = {"train": [ex for ex in full.examples if ex.title not in held],
             "validation": [ex for ex in full.examples if ex.title in held]}  # fmt: skip
    return {k: SquadSplit(task.spec, k, full.source, v) for k, v in parts.items()}


@dataclass
class SpanParts:
    spec: dict
    manifest: dict
    train_path: Path
    train_keep: set[str] | None  # question ids of the train windows trained on (None: all)
    train_windows: int
    validation: WindowSet
    evals: dict[str, WindowSet]
    questions: dict[str, object]  # part name -> SquadSplit (contexts and gold answers)


def load_parts(root: Path, manifest: dict, spec: dict, data_dir: str | None, validation_fraction: float,
               validation_seed: int, eval_names: Sequence[str] | None = None) -> SpanParts:  # fmt: skip
    """The validation and eval windows of a span store, with their questions' text."""
    if manifest["status"] != "complete":
        st.load_split(root / "train")  # raises the store's own "incomplete" error
    task = get_task(spec["name"], data_dir)
    parts = span_parts(task, validation_fraction, validation_seed)
    questions = {"validation": parts["validation"]}

    def load(name: str, keep: set[str] | None = None) -> WindowSet:
        split = st.load_split(root / name)
        st.check_compatible(split, **same_source(manifest))
        return WindowSet.from_split(split, keep)

    if (root / "validation").is_dir():
        validation, train_keep, where = load("validation"), None, root / "validation"
    else:  # carve whole articles out of STORE/train, as fine-tuning did: one pass over its shards
        held = {ex.id for ex in parts["validation"].examples}
        validation, *rest = [WindowSet.from_split(shard, held) for shard in st.iter_token_shards(root / "train")]
        for piece in rest:
            validation.extend(piece)
        train_keep, where = {ex.id for ex in parts["train"].examples}, root / "train"
    check_ids(where, validation.example_ids, parts["validation"])
    n_train = manifest["rows"] - (len(validation) if train_keep is not None else 0)
    names = list(eval_names) if eval_names is not None else [s for s in spec["eval_splits"] if (root / s).is_dir()]
    evals = {}
    for name in names:
        evals[name] = load(name)
        questions[name] = task.load(name)
        check_ids(root / name, evals[name].example_ids, questions[name])
    return SpanParts(spec, manifest, root / "train", train_keep, n_train, validation, evals, questions)


def check_ids(where: Path, window_qids: Sequence[str], split) -> None:
    """The store's windows must cover exactly the questions of the task's part."""
    stored, wanted = set(window_qids), {ex.id for ex in split.examples}
    if stored != wanted:
        extra, missing = sorted(stored - wanted), sorted(wanted - stored)
        raise DataError(where, f"windows do not match the task's {split.split} questions "
                        f"({len(missing)} missing, e.g. {missing[:1]}; {len(extra)} unexpected, e.g. {extra[:1]}); "
                        "was it embedded from other data?")  # fmt: skip


def train_batches(parts: SpanParts, batch_size: int, rng: np.random.Generator,
                  world: World = ONE) -> Iterator[WindowSet]:  # fmt: skip
    """One epoch of batches of windows of similar length: shuffled shards, shuffled within a shard.
    Ranks draw the same epoch seed (a resumed run stays in step); each reads its own shards in
    batches of ``batch_size / size``, shuffled by a generator of that seed and its rank."""
    seed = int(rng.integers(2**31))
    local = rng if world.size == 1 else np.random.default_rng([seed, world.rank])
    size = batch_size // world.size
    part = None if world.size == 1 else (world.rank, world.size)
    for shard in st.iter_token_shards(parts.train_path, shuffle=True, seed=seed, part=part):
        ws = WindowSet.from_split(shard, parts.train_keep)
        if not len(ws):
            continue
        lengths = np.array([len(h) for h in ws.hidden])
        for idx in length_batches(lengths, size, local):
            yield WindowSet([ws.ids[i] for i in idx], [], [ws.hidden[i] for i in idx], [], ws.labels[idx], None)
