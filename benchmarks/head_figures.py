"""Head figures that a redesign must keep: heads on the `make run` RTE store, on an STS-B store,
and span heads on a synthetic SQuAD store from a tiny random BERT (the figures of the closing
note of issue 10; run the same calls on older code to compare).

    BERTVISION_DATA=../shared/data .venv/bin/python benchmarks/head_figures.py \\
        --rte runs/demo/store --stsb runs/stsb-pre --out /tmp/head-figures

--stsb is a store of STS-B (train, dev) from any checkpoint, e.g.
``bertvision embed --task stsb --splits train dev --selection mean --out runs/stsb-pre``.
Prints JSON: validation and dev mean / std over seeds, and per span seed its best epoch and
threshold.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from bertvision.config import (
    EmbedConfig,
    FinetuneConfig,
    HeadArchitecture,
    HeadTrainConfig,
    Optimisation,
    Windowing,
)
from bertvision.embed import embed
from bertvision.encoders import load_tokenizer
from bertvision.finetune import finetune
from bertvision.train import train_heads


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rte", required=True, help="the RTE store of `make run` (runs/demo/store)")
    p.add_argument("--stsb", required=True, help="an STS-B store (train, dev)")
    p.add_argument("--out", required=True)
    args = p.parse_args()
    out = Path(args.out)
    res = {}
    for name, store in (("rte", args.rte), ("stsb", args.stsb)):
        s = train_heads(HeadTrainConfig(store=store, seeds=(0, 1, 2)), out / f"{name}-heads")
        res[name] = {k: s[k] for k in ("validation", "dev")}
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from transformers import BertConfig, BertModel

    from tests.test_squad_pipeline import _squad_file  # the synthetic SQuAD files of the tests

    tok = load_tokenizer()
    torch.manual_seed(0)
    bert, data = out / "tiny-bert", out / "squad-data"
    bert.mkdir(parents=True, exist_ok=True)
    BertModel(BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=37, max_position_embeddings=128)).save_pretrained(bert, safe_serialization=True)  # fmt: skip
    tok.save_pretrained(bert)
    (data / "squad2").mkdir(parents=True, exist_ok=True)
    (data / "glue").mkdir(exist_ok=True)
    _squad_file(data / "squad2" / "train-v2.0.json", 10, 0)
    _squad_file(data / "squad2" / "dev-v2.0.json", 3, 1)
    finetune(FinetuneConfig(task="squad2", encoder=str(bert), data_dir=str(data), epochs=1, batch_size=8, max_length=128,
                            windowing=Windowing(doc_stride=48), validation_fraction=0.2), out / "squad-ft")  # fmt: skip
    embed(EmbedConfig(task="squad2", checkpoint=str(out / "squad-ft" / "checkpoint-e1"), splits=("train", "dev"),
                      data_dir=str(data), max_length=128, windowing=Windowing(doc_stride=48)), out / "span-store")  # fmt: skip
    cfg = HeadTrainConfig(store=str(out / "span-store"), seeds=(0, 1), head=HeadArchitecture(adapter_size=8),
                          optim=Optimisation(epochs=3, batch_size=8), data_dir=str(data), validation_fraction=0.2)  # fmt: skip
    s = train_heads(cfg, out / "span-heads")
    res["span"] = {k: s[k] for k in ("validation", "dev")}
    res["span_runs"] = [{"best_epoch": r["best_epoch"], "threshold": r["threshold"], "dev_f1": r["dev"]["f1"]} for r in s["runs"]]
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
