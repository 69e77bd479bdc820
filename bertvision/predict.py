"""A finished run applied to new texts: `load_model` (``bertvision.load_model(RUN).predict(rows)``)
and 'bertvision predict'. One streaming pass per chunk of rows: tokenise, the run's checkpoint with
every hidden state, the selections its heads read, the heads (or the ensemble, or the checkpoint's
own head); nothing is stored. Chunks and batches are the run's store's (its shard rows, the embed
stage's batch size), so a labelled split's predictions score as the run reported (CPU, fp32)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import accumulate, islice
from pathlib import Path

from bertvision.errors import ConfigError, DataError, json_error

MODELS = ("ensemble", "head", "encoder")
IN_FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet"}
OUT_FORMATS = (".csv", ".jsonl", ".parquet")
GLUE_FILES = {"cola": "CoLA", "sst2": "SST-2", "mrpc": "MRPC", "qqp": "QQP", "stsb": "STS-B", "qnli": "QNLI",
              "rte": "RTE", "wnli": "WNLI", "mnli": {"test_matched": "MNLI-m", "test_mismatched": "MNLI-mm"}}  # fmt: skip
"""GLUE task -> its leaderboard file's name (without .tsv), by test split for MNLI."""


def _json(path: Path, what: str):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(path, f"not found: {what}") from None
    except json.JSONDecodeError as e:
        raise json_error(path, e, what="malformed JSON") from e


def _record(run: Path) -> dict:
    """A run folder's pipeline.json; a folder without one is no run."""
    from bertvision.pipeline import PIPELINE_FILE

    if not (run / PIPELINE_FILE).is_file():
        raise DataError(run, f"not a run folder (no {PIPELINE_FILE}): give a folder written by 'bertvision run'")
    return _json(run / PIPELINE_FILE, "the run's record")


@dataclass
class _Member:
    """One model whose outputs are averaged: a head on one selection's states, or (head None)
    the checkpoint's own task head; ``weight`` as the run's ensemble chose it."""

    name: str
    head: object | None
    selection: str | None
    weight: float


class RunModel:
    """What a run chose, ready to predict: ``model`` is "ensemble" (the default where the run made
    one), "head" (the best configuration's seeds averaged, or ``seed``'s alone) or "encoder" (the
    fine-tuned checkpoint the stores were embedded with, its own task head). Span tasks: `SpanRunModel`."""

    FAMILY = "sentence"

    def __init__(self, run: str | os.PathLike, model: str | None = None, seed: int | None = None,
                 device: str | None = None):  # fmt: skip
        from bertvision.config import family
        from bertvision.pipeline import FIRST
        from bertvision.store import file_sha256, read_manifest

        self.run = Path(run)
        pipeline = _record(self.run)
        if pipeline.get("status") != "done":
            raise ConfigError(f"{self.run}: the run has not finished (status {pipeline.get('status')!r}); "
                              "finish it with 'bertvision run' first")  # fmt: skip
        self.spec, self.config = pipeline["task"], pipeline["config"]
        self.family = family(self.spec["kind"]).name
        has_ensemble = (self.run / "ensemble" / "ensemble.json").is_file()
        self.model = model or ("ensemble" if has_ensemble else "head")
        if self.model not in MODELS:
            raise ConfigError(f"--model must be one of {MODELS}, not {self.model!r}")
        if self.model == "ensemble" and not has_ensemble:
            raise ConfigError(f"{self.run}: the run made no ensemble (--top-k 1 and no encoder member); use --model head")
        if seed is not None and self.model != "head":
            raise ConfigError("--seed picks one of the best configuration's seeds: it goes with --model head")
        if self.family != self.FAMILY:
            raise ConfigError(f"{self.run}: predictions for {self.spec['kind']} tasks are not supported yet")
        self.members = self._members(seed)
        selections = sorted({m.selection for m in self.members if m.selection})
        store = self.run / "store" / (selections[0] if selections else "cls") / "train"
        manifest = read_manifest(store)
        embed = _json(self.run / "stages" / f"store-{manifest['selection']}.json", "the store stage's record")
        checkpoint = self.run / FIRST.format(self.config["seeds"][0])
        if file_sha256(checkpoint / "model.safetensors") != manifest["checkpoint_sha256"]:
            raise DataError(checkpoint, f"not the checkpoint {store} was embedded with (its sha256 differs)")
        from bertvision.extract import HiddenStateExtractor

        self.chunk = int(manifest["shard_rows"])
        self.extractor = HiddenStateExtractor(
            str(checkpoint), self.spec["text_fields"], selection=manifest["selection"] if len(selections) < 2
            else tuple(selections), max_length=manifest["max_length"], batch_size=embed["settings"]["embed"]["batch_size"],
            device=device, task_head=any(m.head is None for m in self.members))  # fmt: skip
        self.device = self.extractor.device
        for m in self.members:
            if m.head is not None:
                m.head[0].to(self.device)

    def _members(self, seed: int | None) -> list[_Member]:
        from bertvision.kinds import head_kind
        from bertvision.sentences.heads import SentenceHeads, SentenceTokenHeads
        from bertvision.train import load_head

        def head(folder: Path, name: str, selection: str, weight: float) -> _Member:
            model, meta = load_head(folder, family="sentence")
            kind = head_kind(meta)
            if isinstance(kind, SentenceTokenHeads) or not isinstance(kind, SentenceHeads):
                raise ConfigError(f"{folder}: predictions of heads on token states are not supported yet")
            return _Member(name, (model, kind), selection, weight)

        if self.model == "encoder":
            return [_Member("encoder", None, None, 1.0)]
        if self.model == "head":
            about = _json(self.run / "heads" / "config.json", "the heads stage's config")
            seeds = about["train"]["seeds"]
            if seed is not None and seed not in seeds:
                raise ConfigError(f"--seed {seed}: the run trained seeds {', '.join(map(str, seeds))}")
            selection = about["store"]["selection"]
            return [head(self.run / "heads" / f"seed-{k}", f"seed-{k}", selection, 1.0)
                    for k in ([seed] if seed is not None else seeds)]  # fmt: skip
        ens = _json(self.run / "ensemble" / "ensemble.json", "the ensemble")
        weights = ens["ensembles"][ens["chosen"]]["weights"]
        members = []
        for name, weight in weights.items():
            if not weight:
                continue
            if name == "encoder":
                members.append(_Member(name, None, None, float(weight)))
            else:
                selection = Path(ens["members"][name]["store"]).name
                members.append(head(self.run / "tune" / name, name, selection, float(weight)))
        return members

    @property
    def described(self) -> str:
        """What predicts, in words (the CLI's line)."""
        return self.model

    @property
    def text_fields(self) -> list[str]:
        return list(self.spec["text_fields"])

    def columns(self) -> list[str]:
        """The output's columns: id, the label and each class's probability, or the score."""
        labels = self.spec["labels"]
        return ["id", "label", *(f"prob_{name}" for name in labels)] if labels else ["id", "score"]

    def predict_batch(self, batch: dict) -> dict:
        """``{"id", text fields...}`` (columns) -> the output's columns (`columns`)."""
        import torch

        from bertvision.sentences.ensemble import combine_outputs
        from bertvision.sentences.heads import SentenceHeads

        out = self.extractor(batch)
        hidden = out["hidden"]
        averaged, kind = [], SentenceHeads(self.spec["kind"], probabilities=bool(self.spec["labels"]))
        for m in self.members:
            if m.head is None:
                outputs = out["encoder_logits"]
            else:
                states = hidden[m.selection] if isinstance(hidden, dict) else hidden
                outputs = m.head[1].outputs(m.head[0], torch.from_numpy(states), self.device)
            averaged.append(kind.averaged(outputs))
        combined = combine_outputs(averaged, [m.weight for m in self.members])
        result = {"id": [str(x) for x in out["id"]]}
        if not self.spec["labels"]:
            result["score"] = combined[:, 0].tolist()
            return result
        result["label"] = [self.spec["labels"][i] for i in combined.argmax(axis=1)]
        for j, name in enumerate(self.spec["labels"]):
            result[f"prob_{name}"] = combined[:, j].tolist()
        return result

    def batches(self, input: str | None, split: str | None) -> Iterator[dict]:
        """Column batches of the rows to predict: ``input``'s (a file) or the run's task's ``split``."""
        if split is None:
            yield from read_input(input, self.text_fields)
            return
        from bertvision.extract import iter_split_batches
        from bertvision.tasks import get_task

        data = get_task(self.config["task"], self.config["data_dir"]).load(split)
        for b in iter_split_batches(data, self.chunk):
            yield {k: v for k, v in b.items() if k != "label"}

    def writer(self, target: Path) -> _Writer:
        return _Writer(target, self.columns())

    def predict(self, rows: Iterable[dict]) -> list[dict]:
        """Predictions for rows given as dicts of the task's text fields (and an optional "id")."""
        rows = list(rows)
        batch = _batch_of(rows, self.text_fields, "rows", 0)
        out = [] if not rows else self.predict_batch(batch)
        return [{k: out[k][i] for k in out} for i in range(len(rows))]

    def stream(self, batches: Iterable[dict]) -> Iterator[dict]:
        """`predict_batch` over batches of columns, re-cut to the store's chunks."""
        for chunk in _rechunk(batches, self.chunk):
            yield self.predict_batch(chunk)


def load_model(run: str | os.PathLike, model: str | None = None, seed: int | None = None,
               device: str | None = None) -> RunModel:  # fmt: skip
    """The model a run chose (`RunModel`; span tasks: `SpanRunModel`), to call ``.predict(rows)`` on."""
    from bertvision.config import family
    from bertvision.spans.predict import SpanRunModel

    kind = _record(Path(run)).get("task", {}).get("kind")
    return (SpanRunModel if kind and family(kind).name == "span" else RunModel)(run, model, seed, device)


# ---------------------------------------------------------------------------------------------
# Input and output files


def _batch_of(rows: list[dict], fields: list[str], source: str, first: int, lines: list[int] | None = None) -> dict:
    """Columns of row dicts: the text fields (non-empty text) and "id" (the row's number, counted
    from ``first``, where it has none); a problem names ``lines``' line (text files), else the row."""
    from bertvision.tasks.base import check_text

    batch: dict = {"id": [], **{f: [] for f in fields}}
    for i, (row, line) in enumerate(zip(rows, lines or [None] * len(rows), strict=True), first):
        at = {"line": line} if line is not None else {"key": f"row {i}"}
        for f in fields:
            if f not in row:
                raise DataError(source, f"no field {f!r} (the task's text fields are {', '.join(fields)})", **at)
            if not isinstance(row[f], str):
                raise DataError(source, f"field {f!r} must be text, not {type(row[f]).__name__}", **at)
            batch[f].append(check_text(row[f], source, f, **at))
        batch["id"].append(str(row.get("id", i)))
    return batch


def read_input(path: str | os.PathLike, fields: list[str], rows_per_batch: int = 4096) -> Iterator[dict]:
    """Column batches ``{"id", text fields}`` of a CSV, TSV, JSON-lines or Parquet file, read as
    a stream; errors name the file (and line); an "id" column is optional (else row numbers)."""
    from bertvision.tasks.readers import read_rows

    path = Path(path)
    fmt = IN_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ConfigError(f"--input {path}: cannot tell its format; name it .csv, .tsv, .jsonl or .parquet")
    if not path.is_file():
        raise DataError(path, "input file not found")
    seen = 0
    if fmt == "parquet":
        import pyarrow.parquet as pq

        try:
            f = pq.ParquetFile(path)
        except Exception as e:  # pyarrow's ArrowInvalid and others: not a Parquet file
            raise DataError(path, f"not a readable Parquet file ({e})") from None
        missing = [c for c in fields if c not in f.schema_arrow.names]
        if missing:
            raise DataError(path, f"no column {', '.join(map(repr, missing))} (the task's text fields are "
                            f"{', '.join(fields)}; the file has {', '.join(f.schema_arrow.names)})")  # fmt: skip
        columns = [c for c in ("id", *fields) if c in f.schema_arrow.names]
        for b in f.iter_batches(batch_size=rows_per_batch, columns=columns):
            rows = b.to_pylist()
            yield _batch_of(rows, fields, str(path), seen)
            seen += len(rows)
    else:
        header, rows = read_rows(path, fmt)
        missing = [c for c in fields if c not in header]
        if missing and fmt != "jsonl":
            raise DataError(path, f"no column {', '.join(map(repr, missing))} (the task's text fields are "
                            f"{', '.join(fields)}; the header has {', '.join(header)})", line=1)  # fmt: skip
        while chunk := list(islice(rows, rows_per_batch)):
            yield _batch_of([r for _, r in chunk], fields, str(path), seen, [line for line, _ in chunk])
            seen += len(chunk)
    if not seen:
        raise DataError(path, "no rows to predict (the file is empty or holds a header only)")


def read_parquet_rows(path: str | os.PathLike, fields: list[str], start: int, stop: int) -> dict:
    """Rows ``start:stop`` of a Parquet file as one column batch, checked as `read_input` checks
    them (ids: its "id" column, else row numbers); only the row groups holding them are read."""
    import pyarrow.parquet as pq

    f = pq.ParquetFile(path)
    sizes = [f.metadata.row_group(g).num_rows for g in range(f.metadata.num_row_groups)]
    ends = list(accumulate(sizes))
    groups = [g for g in range(len(sizes)) if ends[g] > start and ends[g] - sizes[g] < stop]
    first = ends[groups[0]] - sizes[groups[0]] if groups else start
    columns = [c for c in ("id", *fields) if c in f.schema_arrow.names]
    table = f.read_row_groups(groups, columns=columns).slice(start - first, stop - start)
    return _batch_of(table.to_pylist(), fields, str(path), start)


def _rechunk(batches: Iterable[dict], size: int) -> Iterator[dict]:
    """Column batches cut (and joined) into batches of ``size`` rows, the last one shorter."""
    held: dict | None = None
    for b in batches:
        held = b if held is None else {k: held[k] + list(b[k]) for k in held}
        while len(held["id"]) >= size:
            yield {k: v[:size] for k, v in held.items()}
            held = {k: v[size:] for k, v in held.items()}
    if held is not None and held["id"]:
        yield held


class _Writer:
    """Rows of columns to a CSV, JSON-lines or Parquet file (by extension), written to a temporary
    file beside it and renamed when complete: a failed pass leaves no file."""

    OUT_FORMATS = OUT_FORMATS

    def __init__(self, path: Path, columns: list[str]):
        if path.suffix.lower() not in self.OUT_FORMATS:
            raise ConfigError(f"--out {path}: name it .csv, .jsonl or .parquet (the format is the extension's)")
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path, self.columns, self.rows = path, columns, 0
        self.tmp = path.with_name(f".{path.name}.tmp")
        self.kind = path.suffix.lower()
        self.parquet = None
        if self.kind != ".parquet":
            self.f = open(self.tmp, "w", encoding="utf-8", newline="")
            if self.kind in (".csv", ".tsv"):
                import csv

                self.csv = csv.writer(self.f, **({"delimiter": "\t", "lineterminator": "\n"} if self.kind == ".tsv" else {}))
                self.csv.writerow(columns)

    def write(self, batch: dict) -> None:
        n = len(batch[self.columns[0]])
        if self.kind == ".parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            table = pa.table({c: batch[c] for c in self.columns})
            if self.parquet is None:
                self.parquet = pq.ParquetWriter(self.tmp, table.schema)
            self.parquet.write_table(table)
        elif self.kind in (".csv", ".tsv"):
            self.csv.writerows(zip(*(batch[c] for c in self.columns), strict=True))
        else:
            for i in range(n):
                self.f.write(json.dumps({c: batch[c][i] for c in self.columns}, ensure_ascii=False) + "\n")
        self.rows += n

    def close(self, ok: bool) -> None:
        if self.parquet is not None:
            self.parquet.close()
        elif self.kind != ".parquet":
            self.f.close()
        if ok:
            os.replace(self.tmp, self.path)
        else:
            self.tmp.unlink(missing_ok=True)


def predict(run: str, input: str | None, split: str | None, out: str, model: str | None = None,
            seed: int | None = None, format: str | None = None, device: str | None = None) -> dict:  # fmt: skip
    """'bertvision predict': the run's model over ``input`` (a file) or a task ``split``, to ``out``
    (``format="glue"``: the GLUE leaderboard file of a test split, in the folder ``out``)."""
    import time

    if (input is None) == (split is None):
        raise ConfigError("give one of --input FILE and --split NAME")
    if format not in (None, "glue"):
        raise ConfigError(f"--format must be 'glue', not {format!r}")
    rm = load_model(run, model, seed, device)
    batches = rm.batches(input, split)
    target = _glue_target(rm, split, Path(out)) if format == "glue" else Path(out)
    writer = _GlueWriter(target, rm) if format == "glue" else rm.writer(target)
    t0, ok = time.perf_counter(), False
    try:
        for result in rm.stream(batches):
            writer.write(result)
        ok = True
    finally:
        writer.close(ok)
    seconds = time.perf_counter() - t0
    return {"out": str(target), "rows": writer.rows, "model": rm.described, "seconds": round(seconds, 2),
            "rows_per_second": round(writer.rows / seconds, 1) if seconds else None}  # fmt: skip


def _glue_target(rm: RunModel, split: str | None, out: Path) -> Path:
    name = GLUE_FILES.get(rm.spec["name"])
    if name is None:
        raise ConfigError(f"--format glue: task {rm.spec['name']!r} is no GLUE task")
    if split is None or not split.startswith("test"):
        raise ConfigError("--format glue writes a GLUE test split's leaderboard file: give --split test "
                          "(MNLI: test_matched or test_mismatched)")  # fmt: skip
    return out / f"{name[split] if isinstance(name, dict) else name}.tsv"


class _GlueWriter(_Writer):
    """The GLUE leaderboard's TSV: ``index<TAB>prediction``, labels as GLUE's files write them
    (0/1, entailment/not_entailment...), STS-B scores clipped to [0, 5]."""

    OUT_FORMATS = (".tsv",)

    def __init__(self, path: Path, rm: RunModel):
        from bertvision.tasks.glue import GLUE

        self.values, self.names = GLUE[rm.spec["name"]][1].label_values, rm.spec["labels"]
        super().__init__(path, ["index", "prediction"])

    def write(self, batch: dict) -> None:
        if self.values is None:
            preds = [f"{min(5.0, max(0.0, s)):.3f}" for s in batch["score"]]
        else:
            preds = [self.values[self.names.index(x)] for x in batch["label"]]
        super().write({"index": batch["id"], "prediction": preds})

