"""Span ensembles, as the original study: members' start and end probabilities per token combined
by their maximum or mean, then the usual post-processing with a threshold chosen on validation."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from bertvision import store as st
from bertvision.config import EnsembleConfig
from bertvision.errors import ConfigError
from bertvision.heads import same_source
from bertvision.io import atomic_write_json
from bertvision.kinds import store_kind
from bertvision.outdir import claim
from bertvision.runtime import pick_device
from bertvision.spans.answers import evaluate
from bertvision.spans.data import head_logits, load_parts
from bertvision.spans.heads import SpanHeads
from bertvision.train import load_head

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
    return tuple([np.log(reduce([m[k][w] for m in members]) + 1e-30) for w in range(n)] for k in (0, 1))  # starts, ends


def span_ensemble(cfg: EnsembleConfig, trials: list[dict], out_dir: Path) -> dict:
    """The search's trials and ``cfg.heads`` (and the encoder) on ``cfg.store``: each member and
    each method scored on validation (choosing its threshold), then once on the eval splits."""
    if cfg.store is None:
        raise ConfigError("--store: span ensembles need the token store their heads are scored on")
    kind, manifest, spec = store_kind(cfg.store)
    if not isinstance(kind, SpanHeads):
        raise ConfigError(f"{cfg.store}: a {manifest.get('selection')!r} store of a {kind.name} task; span "
                          "ensembles need a token store of windows")  # fmt: skip
    dev = pick_device(cfg.device)
    parts = load_parts(Path(cfg.store), manifest, spec, cfg.data_dir, cfg.validation_fraction, cfg.validation_seed)
    sets = {"validation": parts.validation, **parts.evals}
    logits: dict[str, dict[str, tuple[list, list]]] = {}  # member -> part -> (starts, ends)
    for head in [*(t["trial"] for t in trials), *cfg.heads]:
        model, meta = load_head(head, family="span")
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
                                      cfg.max_answer_tokens)  # fmt: skip
        out = {"validation": val_scores, "threshold": thr}
        for name in parts.evals:
            scores, preds, _ = evaluate(parts.questions[name], parts.evals[name], *starts_ends[name],
                                        cfg.max_answer_tokens, thr)  # fmt: skip
            out[name], out[f"_predictions_{name}"] = scores, preds.predictions(thr)
        return out

    with claim(out_dir, "ensemble"):
        t0 = time.perf_counter()
        result: dict = {"kind": "span", "members": {}, "ensembles": {}, "store": str(cfg.store)}
        for name, by_part in logits.items():
            result["members"][name] = {k: v for k, v in run(by_part).items() if not k.startswith("_")}
        probs = {name: {p: member_probs(*se) for p, se in by_part.items()} for name, by_part in logits.items()}
        for method in cfg.methods:
            scored = run({p: combine([probs[m][p] for m in probs], method) for p in sets})
            for name in parts.evals:
                atomic_write_json(out_dir / f"predictions-{method}-{name}.json", scored.pop(f"_predictions_{name}"))
            result["ensembles"][method] = scored
        result["seconds"] = round(time.perf_counter() - t0, 2)
        atomic_write_json(out_dir / "ensemble.json", result)
    return result
