"""Ensembles: heads (a search's best trials, or seed folders) and the fine-tuned encoder, combined.

    bertvision ensemble --from-tune runs/rte/tune --top-k 5 --encoder --out runs/rte/ensemble
    bertvision ensemble --store runs/squad/emb/e1 --heads runs/squad/heads/e1/seed-* --encoder \\
        --method max --out runs/squad/ensemble/e1-max

**Sentence tasks** (classification, regression). The members are the best ``--top-k`` trials of a
search (`bertvision.search.leaderboard`), or ``--heads`` seed folders scored on ``--store``, and,
with ``--encoder``, the fine-tuned encoder itself, whose own outputs were stored beside the
hidden states (``encoder_logits``), so no member runs the encoder. Trials of one search may come
from different stores of one task (cls and mean states of the same checkpoint): each member
predicts on the validation part of its own store, carved from train exactly as its training
carved it, and the members must be scored on the same examples in the same order (checked by
id, for validation and each eval split). Classification averages members' softmax
probabilities, regression their predictions. The weights come from greedy ensemble selection
with replacement (Caruana et al., 2004) on validation only: start empty, add the member that
most improves the task's selection score (the mean of its metrics, as heads select), for
``2 x members`` rounds, keep the best prefix; the weights are the counts. Selection with
replacement cannot overfit by giving a member a large weight from one lucky round more than a
plain search over weights would, and the best prefix is never worse on validation than the
best member. The eval split (dev) is scored once, after the weights are fixed: every member,
the uniform average and the greedy ensemble, for comparison.

**Span tasks** (SQuAD 2.0) follow the original study: each member's start and end probabilities
(softmax over a window's real tokens) are combined position by position, by their element-wise
maximum (``max``) or their mean (``mean``); the fine-tuned encoder's own logits may be a member.
The combined probabilities go through the same post-processing (best span with end >= start,
max over windows, a threshold chosen on validation), and every member and ensemble is scored
once on the eval split.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bertvision import store as st
from bertvision.config import EnsembleConfig, HeadTrainConfig, from_dict
from bertvision.errors import ConfigError, DataError
from bertvision.io import atomic_write_json
from bertvision.kinds import (
    KINDS,
    TokenRows,
    carve_rows,
    head_kind,
    same_source,
    selection_score,
    store_kind,
)
from bertvision.metrics import compute_metrics
from bertvision.models.adapter_pooler import TokenAdapterPooler
from bertvision.outdir import check_out_dir, claim
from bertvision.runtime import pick_device
from bertvision.search import leaderboard
from bertvision.span_heads import SpanParts, head_logits, load_parts
from bertvision.spans import evaluate
from bertvision.train import load_head, read_head_config

METHODS = ("max", "mean")


def softmax(x: np.ndarray) -> np.ndarray:
    z = np.exp(x - x.max())
    return z / z.sum()



def member_probs(starts: list, ends: list) -> tuple[list, list]:
    """Per window, softmax over its real tokens of start and of end logits."""
    return [softmax(np.asarray(s, np.float64)) for s in starts], [softmax(np.asarray(e, np.float64)) for e in ends]


def combine(members: list[tuple[list, list]], method: str) -> tuple[list, list]:
    """Element-wise ``max`` or ``mean`` of members' (start probs, end probs), as log-probabilities."""
    if method not in METHODS:
        raise ConfigError(f"--method must be one of {METHODS}, not {method!r}")
    reduce = np.maximum.reduce if method == "max" else (lambda xs: sum(xs) / len(xs))
    n = len(members[0][0])
    starts = [np.log(reduce([m[0][w] for m in members]) + 1e-30) for w in range(n)]
    ends = [np.log(reduce([m[1][w] for m in members]) + 1e-30) for w in range(n)]
    return starts, ends


def ensemble(cfg: EnsembleConfig, out_dir: str | Path) -> dict:
    """The ensemble of ``cfg``'s members, for their kind: sentence members weighted on
    validation (`sentence_ensemble`), span members by max / mean (`span_ensemble`). Writes
    OUT/ensemble.json and returns its content (with "kind")."""
    out_dir = check_out_dir(out_dir)
    trials = leaderboard(cfg.from_tune)[: cfg.top_k] if cfg.from_tune is not None else []
    kinds = {t["kind"] for t in trials} | {head_kind(read_head_config(h)).name for h in cfg.heads}
    if not kinds:  # the encoder alone cannot be an ensemble; EnsembleConfig refuses that
        kinds = {store_kind(cfg.store)[0].name}
    if len(kinds) > 1:
        raise ConfigError(f"the members are heads of different kinds ({', '.join(sorted(kinds))}); "
                          "an ensemble combines heads of one task")  # fmt: skip
    kind = KINDS[kinds.pop()]
    if kind.family == "span":
        if cfg.store is None:
            raise ConfigError("--store: span ensembles need the token store their heads are scored on")
        result = span_ensemble(cfg, [*(t["trial"] for t in trials), *cfg.heads], out_dir)
    else:
        result = sentence_ensemble(cfg, trials, out_dir)
    return result


def span_ensemble(cfg: EnsembleConfig, heads: Sequence[str], out_dir: Path) -> dict:
    """Score each span member and their ensembles on validation (thresholds) and eval splits (once)."""
    max_answer_tokens = cfg.max_answer_tokens
    dev = pick_device(cfg.device)
    parts = load_parts(cfg.store, cfg.data_dir, cfg.validation_fraction, cfg.validation_seed)
    sets = {"validation": parts.validation, **parts.evals}
    logits: dict[str, dict[str, tuple[list, list]]] = {}  # member -> part -> (starts, ends)
    for head in heads:
        model, meta = load_head(head, span=True)
        st.check_compatible(parts.manifest, **same_source({**meta["adapter_pooler"], **meta}))
        model.to(dev)
        logits[str(head)] = {p: head_logits(model, ws, dev) for p, ws in sets.items()}
    if cfg.encoder:
        if not parts.manifest.get("encoder_logits"):
            raise ConfigError(f"{parts.train_path}: the store has no encoder logits (embed a question-answering "
                              "checkpoint from 'bertvision finetune' on a span task)")  # fmt: skip
        logits["encoder"] = {p: ([x[:, 0] for x in ws.encoder_logits], [x[:, 1] for x in ws.encoder_logits])
                             for p, ws in sets.items()}  # fmt: skip

    def run(starts_ends: dict[str, tuple[list, list]]) -> dict:
        val_scores, _, thr = evaluate(parts.questions["validation"], parts.validation, *starts_ends["validation"],
                                      max_answer_tokens)  # fmt: skip
        out = {"validation": val_scores, "threshold": thr}
        for name in parts.evals:
            scores, preds, _ = evaluate(parts.questions[name], parts.evals[name], *starts_ends[name],
                                        max_answer_tokens, thr)  # fmt: skip
            out[name], out[f"_predictions_{name}"] = scores, preds.predictions(thr)
        return out

    with claim(out_dir, "ensemble"):
        return _ensemble(logits, run, sets, parts, cfg.methods, cfg.store, out_dir)


def _ensemble(logits: dict, run, sets: dict, parts: SpanParts, methods: Sequence[str], store, out_dir: Path) -> dict:
    t0 = time.perf_counter()
    result: dict = {"kind": "span", "members": {}, "ensembles": {}, "store": str(store)}
    for name, by_part in logits.items():
        result["members"][name] = {k: v for k, v in run(by_part).items() if not k.startswith("_")}
    probs = {name: {p: member_probs(*se) for p, se in by_part.items()} for name, by_part in logits.items()}
    for method in methods:
        combined = {p: combine([probs[m][p] for m in probs], method) for p in sets}
        scored = run(combined)
        for name in parts.evals:
            atomic_write_json(out_dir / f"predictions-{method}-{name}.json", scored.pop(f"_predictions_{name}"))
        result["ensembles"][method] = scored
    result["seconds"] = round(time.perf_counter() - t0, 2)
    atomic_write_json(out_dir / "ensemble.json", result)
    return result




# ---------------------------------------------------------------------------------------------
# Sentence ensembles

ROUNDS_PER_MEMBER = 2
"""Greedy selection runs this many rounds per member (Caruana et al. use a fixed count too)."""


@dataclass
class Part:
    """One part (validation, or an eval split) of a sentence store, in the store's order."""

    ids: list[str]
    hidden: object
    """(N, L, H) float16 tensor; for a sentence token store, its rows (`TokenRows`)."""
    labels: np.ndarray
    encoder: np.ndarray | None
    """(N, C) float32: the fine-tuned encoder's own outputs, when the store has them."""


@dataclass
class Member:
    """One sentence member: a head (a search trial, or a seed folder) or the encoder."""

    name: str
    store: Path
    folder: Path | None = None
    """The trial or seed folder; None for the encoder."""
    params: dict | None = None
    """A trial's hyperparameters."""
    carve: tuple[float, int] = (0.1, 0)
    """(validation_fraction, validation_seed) of its training."""
    outputs: dict[str, np.ndarray] = field(default_factory=dict)
    """Part -> (N, C) logits (classification) or (N, 1) predictions (regression)."""


def load_parts_of(store: Path, carve: tuple[float, int]) -> tuple[dict, dict, dict[str, Part]]:
    """(train manifest, task spec, part -> `Part`) of a sentence store: the validation part
    carved from STORE/train with the function and arguments its heads' training used
    (`SentenceHeads.load` calls `carve_rows` the same way), and the task's labelled eval
    splits. Ids and stored encoder outputs come along, which a head's `HeadData` leaves out."""
    kind, manifest, spec = store_kind(store)
    if kind.family != "sentence":
        raise ConfigError(f"{store}: a {kind.name} store; sentence members need cls, mean or sentence token stores")
    train = st.load_split(store / "train")  # every shard read is checked (sha256, finite)
    if train.labels is None:
        raise DataError(store / "train", "the train split carries no labels")
    labels = train.labels.numpy()
    _, va = carve_rows(manifest, labels, *carve, None, store / "train")
    enc = train.encoder_logits
    tokens = manifest.get("token_layout") == "sentences"  # a token head's states: `TokenRows`

    def states(split, rows=None):
        if tokens:
            return TokenRows.from_split(split, rows)
        return split.hidden if rows is None else split.hidden[rows]

    parts = {"validation": Part([train.ids[i] for i in va], states(train, va), labels[va],
                                None if enc is None else enc[va])}  # fmt: skip
    for name in spec["eval_splits"]:
        if not (store / name).is_dir():
            continue
        split = st.load_split(store / name)
        st.check_compatible(split, **same_source(train.manifest))
        if split.labels is not None:
            parts[name] = Part(split.ids, states(split), split.labels.numpy(), split.encoder_logits)
    return train.manifest, spec, parts


def greedy_weights(outputs: Sequence[np.ndarray], score: Callable[[np.ndarray], float],
                   rounds: int) -> tuple[list[int], list[dict]]:  # fmt: skip
    """Greedy ensemble selection with replacement (Caruana et al., 2004): from an empty
    ensemble, add in each of ``rounds`` rounds the member whose addition gives the mean of
    outputs with the best ``score`` (a tie goes to the earlier, better-ranked member); return
    the member counts of the best prefix (the earliest, on ties) and each round's choice."""
    counts, total, best, best_counts, history = [0] * len(outputs), 0.0, -np.inf, None, []
    for r in range(rounds):
        scores = [score((total + o) / (r + 1)) for o in outputs]
        j = int(np.argmax(scores))
        counts[j] += 1
        total = total + outputs[j]
        history.append({"round": r + 1, "added": j, "score": scores[j]})
        if best_counts is None or scores[j] > best:
            best, best_counts = scores[j], list(counts)
    return best_counts, history


def softmax_rows(logits: np.ndarray) -> np.ndarray:
    z = np.exp(logits - logits.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def combine_outputs(outputs: Sequence[np.ndarray], weights: Sequence[float]) -> np.ndarray:
    """The weighted mean of members' outputs (probabilities, or regression predictions)."""
    w = np.asarray(weights, np.float64)
    return sum(wi * o for wi, o in zip(w, outputs, strict=True) if wi) / w.sum()


def sentence_ensemble(cfg: EnsembleConfig, trials: list[dict], out_dir: Path) -> dict:
    """Members' outputs on validation and the eval splits; greedy weights chosen on validation;
    every member, the uniform mean and the greedy ensemble scored once on each eval split."""
    members = _sentence_members(cfg, trials)
    dev = pick_device(cfg.device)
    loaded: dict[tuple, tuple] = {}  # (store, carve) -> load_parts_of(...)

    def parts_of(m: Member) -> tuple[dict, dict, dict[str, Part]]:
        key = (m.store.resolve(), m.carve)
        if key not in loaded:
            loaded[key] = load_parts_of(m.store, m.carve)
        return loaded[key]

    ref, ref_parts, spec = None, None, None
    for m in members:
        manifest, m_spec, parts = parts_of(m)
        if ref is None:
            ref, ref_parts, spec = m, parts, m_spec
        _check_same_examples(m, parts, ref, ref_parts, m_spec, spec)
        if m.folder is None:  # the encoder: its outputs were stored at embedding time
            if not manifest.get("encoder_logits"):
                raise ConfigError(f"{m.store / 'train'}: the store has no encoder logits (embed a sequence "
                                  "classification or regression checkpoint from 'bertvision finetune')")  # fmt: skip
            m.outputs = {p: part.encoder for p, part in parts.items()}
            continue
        model, meta = load_head(m.folder, span=False)
        st.check_compatible(manifest, **same_source({**meta["adapter_pooler"], **meta}))
        if meta["adapter_pooler"].get("task_kind") != m_spec["kind"]:
            raise ConfigError(f"{m.folder}: a {meta['adapter_pooler'].get('task_kind')} head, but {m.store} holds "
                              f"a {m_spec['kind']} task")  # fmt: skip
        kind = head_kind(meta)
        if (kind.module is TokenAdapterPooler) != (manifest.get("token_layout") == "sentences"):
            raise ConfigError(f"{m.folder}: a head on {'token' if kind.module is TokenAdapterPooler else 'cls/mean'} "
                              f"states, but {m.store} is a {manifest.get('selection')} store")  # fmt: skip
        model.to(dev)
        m.outputs = {p: kind.outputs(model, part.hidden, device=dev) for p, part in parts.items()}
    loaded.clear()  # the hidden states are no longer needed
    labels = {p: part.labels for p, part in ref_parts.items()}
    evals = [p for p in labels if p != "validation"]
    classification = spec["kind"] == "classification"

    def scores(outputs: np.ndarray, part: str) -> dict:
        metrics = compute_metrics(spec["metrics"], outputs, labels[part])
        return {**metrics, "score": selection_score(metrics)}

    # What is averaged: probabilities for classification, predictions for regression.
    averaged = [{p: softmax_rows(o.astype(np.float64)) if classification else o.astype(np.float64)
                 for p, o in m.outputs.items()} for m in members]  # fmt: skip
    with claim(out_dir, "ensemble"):
        t0 = time.perf_counter()
        val = [a["validation"] for a in averaged]
        counts, history = greedy_weights(val, lambda o: scores(o, "validation")["score"],
                                         ROUNDS_PER_MEMBER * len(members))  # fmt: skip
        for h in history:
            h["added"] = members[h["added"]].name
        result: dict = {
            "kind": spec["kind"], "task": spec["name"], "metrics": list(spec["metrics"]),
            "from_tune": cfg.from_tune, "selection": "greedy with replacement (Caruana et al. 2004) on validation",
            "validation_rows": len(labels["validation"]), "evals": evals,
            "weights": {m.name: c for m, c in zip(members, counts, strict=True)},
            "members": {}, "ensembles": {},
        }  # fmt: skip
        for m in members:  # each member scored on validation, then once on each eval split
            result["members"][m.name] = {
                "folder": None if m.folder is None else str(m.folder), "store": str(m.store), "params": m.params,
                **{p: scores(m.outputs[p], p) for p in ["validation", *evals]},
            }  # fmt: skip
        for method, weights in (("uniform", [1] * len(members)), ("greedy", counts)):
            result["ensembles"][method] = {
                "weights": {m.name: w for m, w in zip(members, weights, strict=True)},
                **{p: scores(combine_outputs([a[p] for a in averaged], weights), p) for p in ["validation", *evals]},
            }  # fmt: skip
        result["ensembles"]["greedy"]["rounds"] = history
        # the ensemble to report: greedy weights unless equal weights do better on validation
        val_score = {m: e["validation"]["score"] for m, e in result["ensembles"].items()}
        result["chosen"] = "greedy" if val_score["greedy"] >= val_score["uniform"] else "uniform"
        result["seconds"] = round(time.perf_counter() - t0, 2)
        atomic_write_json(out_dir / "ensemble.json", result)
    return result


def _sentence_members(cfg: EnsembleConfig, trials: list[dict]) -> list[Member]:
    """The members: the search's best trials (their own stores), the --heads (on --store), and
    the encoder (the stored logits of --store, or of the best trial's store)."""
    members: list[Member] = []
    root = Path(cfg.from_tune) if cfg.from_tune is not None else None
    for t in trials:
        train = from_dict(HeadTrainConfig, t["config"])
        folder = Path(t["trial"])
        name = str(folder.relative_to(root)) if root is not None and folder.is_relative_to(root) else str(folder)
        members.append(Member(name, Path(train.store), folder, t["params"],
                              (train.validation_fraction, train.validation_seed)))  # fmt: skip
    for head in cfg.heads:
        train = read_head_config(head).get("train") or {}
        carve = (train.get("validation_fraction", cfg.validation_fraction),
                 train.get("validation_seed", cfg.validation_seed))  # fmt: skip
        members.append(Member(str(head), Path(cfg.store), Path(head), None, carve))
    if cfg.encoder:
        store = Path(cfg.store) if cfg.store is not None else members[0].store
        carve = members[0].carve if members else (cfg.validation_fraction, cfg.validation_seed)
        members.append(Member("encoder", store, None, None, carve))
    if len(members) < 2:
        raise ConfigError(f"an ensemble needs at least two members; {cfg.from_tune} gave {len(trials)} trial(s)")
    names = [m.name for m in members]
    if len(set(names)) != len(names):
        raise ConfigError(f"a member is given twice: {sorted({n for n in names if names.count(n) > 1})}")
    carves = {m.carve for m in members}
    if len(carves) > 1:
        raise ConfigError(f"the members were selected on different validation carves (fraction, seed) {sorted(carves)}; "
                          "an ensemble's weights are chosen on one validation part")  # fmt: skip
    return members


def _check_same_examples(m: Member, parts: dict[str, Part], ref: Member, ref_parts: dict[str, Part],
                         spec: dict, ref_spec: dict) -> None:  # fmt: skip
    """Members are combined example by example: the same task, parts, and ids in one order."""
    if (spec["name"], spec["kind"]) != (ref_spec["name"], ref_spec["kind"]):
        raise ConfigError(f"{m.store}: task {spec['name']} ({spec['kind']}), but {ref.store} holds "
                          f"{ref_spec['name']} ({ref_spec['kind']}); an ensemble combines members of one task")  # fmt: skip
    if set(parts) != set(ref_parts):
        raise ConfigError(f"{m.store}: labelled parts {sorted(parts)}, but {ref.store} has {sorted(ref_parts)}; "
                          "every member must be scored on the same splits")  # fmt: skip
    for name, part in parts.items():
        if part.ids != ref_parts[name].ids:
            where = f"{m.store / 'train'} (validation carve)" if name == "validation" else str(m.store / name)
            raise ConfigError(f"{where}: holds other examples (or another order) than {ref.store}'s {name} part; "
                              "members must come from stores of the same task data and validation carve")  # fmt: skip
