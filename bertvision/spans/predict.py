"""A finished span run applied to new questions (`SpanRunModel`, what `bertvision.load_model` gives
for SQuAD runs): each question cut into windows as the run's store cut them, the checkpoint's token
states in the store's chunks of windows, the head (or the ensemble's members, or the checkpoint's
own question-answering head), then per question the best span and the run's validation threshold.
Its no-answer probability is the logistic of (null score difference - threshold): above 0.5 where
the answer is "" (up to rounding at the threshold itself), ordered as the difference is."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from bertvision.errors import ConfigError, DataError
from bertvision.predict import OUT_FORMATS, RunModel, _json, _Member, read_input

WINDOW_COLUMNS = ("id", "example_id", "input_ids", "token_type_ids", "offsets")


class SpanRunModel(RunModel):
    """`RunModel` of a span task: ``model`` "head" is one seed's head (``seed``, else the seed with
    the best validation F1: each seed has its own threshold, so seeds are not averaged), "ensemble"
    the method (max or mean) with the better validation F1, "encoder" the checkpoint's own head with
    the threshold the ensemble chose for it. Outputs: id, answer ("" for none), no_answer_probability."""

    FAMILY = "span"

    def __init__(self, run: str | os.PathLike, model: str | None = None, seed: int | None = None,
                 device: str | None = None):  # fmt: skip
        from bertvision.store import read_manifest

        super().__init__(run, model, seed, device)
        self.windowing = read_manifest(self.run / "store" / "tokens" / "train")["extra"]["windowing"]

    @property
    def described(self) -> str:
        if self.model == "ensemble":
            return f"ensemble ({self.method}: the better validation F1)"
        return f"head ({self.members[0].name})" if self.model == "head" else self.model

    def _members(self, seed: int | None) -> list[_Member]:
        from bertvision.spans.ensemble import combine, member_probs
        from bertvision.train import load_head

        self.combine = lambda by_member: by_member[0]  # one member: its logits
        if self.model == "head":
            seeds = _json(self.run / "heads" / "config.json", "the heads stage's config")["train"]["seeds"]
            if seed is not None and seed not in seeds:
                raise ConfigError(f"--seed {seed}: the run trained seeds {', '.join(map(str, seeds))}")
            if seed is None:
                f1 = {k: _json(self.run / "heads" / f"seed-{k}" / "metrics.json", "a head's metrics")["validation"]["f1"]
                      for k in seeds}  # fmt: skip
                seed = max(seeds, key=f1.__getitem__)
            model, meta = load_head(self.run / "heads" / f"seed-{seed}", family="span")
            self.threshold, self.max_answer_tokens = meta["threshold"], meta["train"]["max_answer_tokens"]
            return [_Member(f"seed-{seed}", (model, None), "tokens", 1.0)]
        ens = _json(self.run / "ensemble" / "ensemble.json", "the ensemble")
        self.max_answer_tokens = _json(self.run / "stages" / "ensemble.json",
                                       "the ensemble stage's record")["settings"]["ensemble"]["max_answer_tokens"]  # fmt: skip
        if self.model == "encoder":
            if "encoder" not in ens["members"]:
                raise ConfigError(f"{self.run}: the run's ensemble has no encoder member (its checkpoint has no "
                                  "question-answering head)")  # fmt: skip
            self.threshold = ens["members"]["encoder"]["threshold"]
            return [_Member("encoder", None, "tokens", 1.0)]
        self.method = max(ens["ensembles"], key=lambda m: ens["ensembles"][m]["validation"]["f1"])
        self.threshold = ens["ensembles"][self.method]["threshold"]
        self.combine = lambda by_member: combine([member_probs(*se) for se in by_member], self.method)
        # members are named by their folders in the run as it was made (STORE is RUN/store/tokens)
        made, members = Path(ens["store"]).parents[1], []
        for name in ens["members"]:
            if name == "encoder":
                members.append(_Member(name, None, "tokens", 1.0))
            else:
                folder = self.run / Path(name).relative_to(made) if Path(name).is_relative_to(made) else Path(name)
                members.append(_Member(name, (load_head(folder, family="span")[0], None), "tokens", 1.0))
        return members

    def columns(self) -> list[str]:
        return ["id", "answer", "no_answer_probability"]

    def batches(self, input: str | None, split: str | None) -> Iterator[dict]:
        """Column batches ``{"id", "question", "context"}``: a file's rows (ids unique) or a split's questions."""
        if split is None:
            yield from _unique(read_input(input, self.text_fields), input)
            return
        from bertvision.tasks import get_task

        examples = get_task(self.config["task"], self.config["data_dir"]).load(split).examples
        for lo in range(0, len(examples), self.chunk):
            part = examples[lo : lo + self.chunk]
            yield {"id": [ex.id for ex in part], "question": [ex.question for ex in part],
                   "context": [ex.context for ex in part]}  # fmt: skip

    def writer(self, target: Path) -> object:
        if target.suffix.lower() == ".json":
            return SquadWriter(target)
        if target.suffix.lower() not in OUT_FORMATS:
            raise ConfigError(f"--out {target}: name it .json (SQuAD predictions), .csv, .jsonl or .parquet")
        return super().writer(target)

    def predict_batch(self, batch: dict) -> dict:
        out = {c: [] for c in self.columns()}
        for part in self.stream(_unique([batch], "rows")):
            for c in out:
                out[c] += part[c]
        return out

    def stream(self, batches: Iterable[dict]) -> Iterator[dict]:
        """Answers to batches of questions; windows go through the checkpoint in the store's
        chunks (across batches), and a question is answered once all its windows are scored."""
        from bertvision.spans.windows import make_windows, offsets_array, window_ids

        held = {k: [] for k in WINDOW_COLUMNS}  # windows not through the checkpoint yet
        scored: list[tuple] = []  # (question id, offsets, [(starts, ends) per member]) per window
        contexts: dict[str, str] = {}  # questions not answered yet, in input order
        for batch in batches:
            examples = [_Question(*row) for row in zip(batch["id"], batch["question"], batch["context"], strict=True)]
            w = make_windows(self.extractor.tokenizer, examples, **self.windowing)
            for k, v in zip(WINDOW_COLUMNS, (window_ids(w.example_ids), w.example_ids, w.input_ids, w.token_type_ids,
                                             [offsets_array(o) for o in w.offsets]), strict=True):  # fmt: skip
                held[k] += v
            contexts.update(zip(batch["id"], batch["context"], strict=True))
            while len(held["id"]) >= self.chunk:
                scored += self._score(held)
            until = held["example_id"][0] if held["id"] else None
            if contexts and next(iter(contexts)) != until:
                yield self._answers(scored, contexts, until)
        while held["id"]:
            scored += self._score(held)
        if contexts:
            yield self._answers(scored, contexts, None)

    def _score(self, held: dict) -> list[tuple]:
        """The first ``chunk`` held windows through the checkpoint and each member (taken from ``held``)."""
        import torch

        from bertvision.spans.data import WindowSet, head_logits

        cut = {k: v[: self.chunk] for k, v in held.items()}
        for v in held.values():
            del v[: self.chunk]
        out = self.extractor(cut)
        windows = WindowSet(list(out["id"]), list(out["example_id"]), [torch.from_numpy(h) for h in out["hidden"]],
                            out["offsets"], None, None)  # fmt: skip
        by_member = [head_logits(m.head[0], windows, self.device) if m.head is not None else
                     ([x[:, 0] for x in out["encoder_logits"]], [x[:, 1] for x in out["encoder_logits"]])
                     for m in self.members]  # fmt: skip
        return [(q, o, [(s[i], e[i]) for s, e in by_member]) for i, (q, o) in enumerate(zip(windows.example_ids,
                windows.offsets, strict=True))]  # fmt: skip

    def _answers(self, scored: list[tuple], contexts: dict[str, str], until: str | None) -> dict:
        """Answers to the questions before ``until`` (the first with windows not all scored; None:
        none), their windows and contexts taken out of ``scored`` and ``contexts``."""
        from scipy.special import expit

        from bertvision.spans.answers import postprocess

        ready = list(contexts)[: list(contexts).index(until) if until is not None else None]
        n = next((i for i, w in enumerate(scored) if w[0] == until), len(scored))
        windows, scored[:n] = scored[:n], []
        by_member = [([w[2][j][0] for w in windows], [w[2][j][1] for w in windows]) for j in range(len(self.members))]
        starts, ends = self.combine(by_member)
        preds = postprocess([w[0] for w in windows], [w[1] for w in windows], starts, ends,
                            {q: contexts.pop(q) for q in ready}, max_answer_tokens=self.max_answer_tokens)  # fmt: skip
        answers = preds.predictions(self.threshold)
        return {"id": ready, "answer": [answers[q] for q in ready],
                "no_answer_probability": [float(expit(preds.null_diff[q] - self.threshold)) for q in ready]}  # fmt: skip


class _Question:
    """What `make_windows` reads of a question: no gold answer (the window targets go unused)."""

    is_impossible, answers = True, ()

    def __init__(self, id: str, question: str, context: str):
        self.id, self.question, self.context = id, question, context


def _unique(batches: Iterable[dict], source: str | os.PathLike) -> Iterator[dict]:
    """``batches``, refusing a question id seen before: answers are per question id."""
    seen: set[str] = set()
    for batch in batches:
        for q in batch["id"]:
            if q in seen:
                raise DataError(source, f"question id {q!r} appears twice; each question needs its own id")
            seen.add(q)
        yield batch


class SquadWriter:
    """``--out NAME.json``: ``{question id: answer}`` as 'bertvision squad-eval' reads it, and
    ``NAME.na_prob.json`` beside it ``{question id: no-answer probability}`` (its --na-prob-file);
    both written at the end, each to a temporary file renamed when complete."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path, self.probs, self.rows = path, path.with_name(f"{path.stem}.na_prob.json"), 0
        self.answers: dict[str, str] = {}
        self.na_probs: dict[str, float] = {}

    def write(self, batch: dict) -> None:
        self.answers.update(zip(batch["id"], batch["answer"], strict=True))
        self.na_probs.update(zip(batch["id"], batch["no_answer_probability"], strict=True))
        self.rows += len(batch["id"])

    def close(self, ok: bool) -> None:
        from bertvision.io import atomic_write_json

        if ok:
            atomic_write_json(self.probs, self.na_probs)
            atomic_write_json(self.path, self.answers)
