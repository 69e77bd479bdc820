"""Sentence ensembles: heads and the fine-tuned encoder's stored outputs averaged with greedy
weights chosen on validation (Caruana et al., 2004: never worse there than the best member), each
member on its own store's validation carve (the same examples, checked by id)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bertvision import store as st
from bertvision.config import EnsembleConfig, HeadTrainConfig, from_dict
from bertvision.errors import ConfigError
from bertvision.heads import same_source
from bertvision.io import atomic_write_json
from bertvision.kinds import head_kind, store_kind
from bertvision.metrics import compute_metrics
from bertvision.outdir import claim
from bertvision.runtime import pick_device
from bertvision.sentences.heads import Part, SentenceHeads, selection_score
from bertvision.train import load_head, read_head_config

ROUNDS_PER_MEMBER = 2  # greedy selection's rounds per member (Caruana et al. use a fixed count too)


@dataclass
class Member:
    """One sentence member: a head (a search trial, or a seed folder) or the encoder."""

    name: str
    store: Path
    folder: Path | None = None  # the trial or seed folder; None for the encoder
    params: dict | None = None  # a trial's hyperparameters
    carve: tuple[float, int] = (0.1, 0)  # (validation_fraction, validation_seed) of its training
    outputs: dict[str, np.ndarray] = field(default_factory=dict)  # part -> (N, C) outputs


def load_parts_of(store: Path, carve: tuple[float, int]) -> tuple:
    """(store kind, train manifest, task spec, part -> `Part`) of a sentence store, carved as its
    heads' training carved it, with the task's labelled eval splits."""
    kind, manifest, spec = store_kind(store)
    if not isinstance(kind, SentenceHeads):
        raise ConfigError(f"{store}: a {kind.name} store; sentence members need cls, mean or sentence token stores")
    train, _, parts = kind.parts(store, carve, None, [s for s in spec["eval_splits"] if (store / s).is_dir()])
    return kind, train.manifest, spec, parts


def greedy_weights(outputs: Sequence[np.ndarray], score: Callable[[np.ndarray], float],
                   rounds: int) -> tuple[list[int], list[dict]]:  # fmt: skip
    """Greedy selection with replacement: each round adds the member giving the best ``score`` (the
    earlier on a tie); returns the counts of the best prefix (the earliest on a tie), each round."""
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
    ref, ref_parts, spec, kind = None, None, None, None
    for m in members:
        key = (m.store.resolve(), m.carve)
        if key not in loaded:
            loaded[key] = load_parts_of(m.store, m.carve)
        of_store, manifest, m_spec, parts = loaded[key]
        if ref is None:
            ref, ref_parts, spec, kind = m, parts, m_spec, of_store
        _check_same_examples(m, parts, ref, ref_parts, m_spec, spec)
        if m.folder is None:  # the encoder: its outputs were stored at embedding time
            if not manifest.get("encoder_logits"):
                raise ConfigError(f"{m.store / 'train'}: the store has no encoder logits (embed a sequence "
                                  "classification or regression checkpoint from 'bertvision finetune')")  # fmt: skip
            m.outputs = {p: part.encoder for p, part in parts.items()}
            continue
        model, meta = load_head(m.folder, family="sentence")
        st.check_compatible(manifest, **same_source({**meta["adapter_pooler"], **meta}))
        head = head_kind(meta)
        if head is not of_store:
            raise ConfigError(f"{m.folder}: a head on {head.reads} states for {head.name}, but {m.store} is a "
                              f"{manifest.get('selection')} store of a {m_spec['kind']} task")  # fmt: skip
        model.to(dev)
        m.outputs = {p: head.outputs(model, part.states, device=dev) for p, part in parts.items()}
    loaded.clear()  # the hidden states are no longer needed
    labels = {p: part.labels for p, part in ref_parts.items()}
    evals = [p for p in labels if p != "validation"]

    def scores(outputs: np.ndarray, part: str) -> dict:
        metrics = compute_metrics(spec["metrics"], outputs, labels[part])
        return {**metrics, "score": selection_score(metrics)}

    averaged = [{p: kind.averaged(o) for p, o in m.outputs.items()} for m in members]
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
