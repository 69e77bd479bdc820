"""Ensembles of heads (a search's best trials, or seed folders) and the fine-tuned encoder, each
combined by its family's ensemble (`bertvision.sentences.ensemble`, `bertvision.spans.ensemble`)."""

from __future__ import annotations

from pathlib import Path

from bertvision.config import EnsembleConfig
from bertvision.errors import ConfigError
from bertvision.kinds import KINDS, head_kind, store_kind
from bertvision.outdir import check_out_dir
from bertvision.search import leaderboard
from bertvision.sentences.ensemble import sentence_ensemble
from bertvision.spans.ensemble import span_ensemble
from bertvision.train import read_head_config

ENSEMBLES = {"sentence": sentence_ensemble, "span": span_ensemble}
"""Task family -> its ensemble: (cfg, the search's trials, out folder) -> ensemble.json's content."""


def ensemble(cfg: EnsembleConfig, out_dir: str | Path) -> dict:
    """``cfg``'s ensemble, for its members' kind: OUT/ensemble.json, whose content it returns."""
    out_dir = check_out_dir(out_dir)
    trials = leaderboard(cfg.from_tune)[: cfg.top_k] if cfg.from_tune is not None else []
    kinds = {t["kind"] for t in trials} | {head_kind(read_head_config(h)).name for h in cfg.heads}
    if not kinds:  # the encoder alone cannot be an ensemble; EnsembleConfig refuses that
        kinds = {store_kind(cfg.store)[0].name}
    if len(kinds) > 1:
        raise ConfigError(f"the members are heads of different kinds ({', '.join(sorted(kinds))}); "
                          "an ensemble combines heads of one task")  # fmt: skip
    return ENSEMBLES[KINDS[kinds.pop()].family](cfg, trials, out_dir)
