"""Time per epoch: an AdapterPooler head on stored embeddings against fine-tuning the encoder,
same data (a task's train split less the carved validation part), same machine, one run.

    python benchmarks/head_vs_encoder_epoch.py --store STORE [--task rte] [--ft-steps 20]

The encoder's epoch is timed over --ft-steps optimizer steps (length-grouped batches of 32, as
`bertvision finetune` trains) and scaled to a whole epoch; the head's over whole epochs.
"""

import argparse
import json
import math
import time

import numpy as np
import torch

from bertvision.encoders import (
    collate,
    encode_split,
    length_batches,
    load_model,
    load_tokenizer,
    resolve_encoder,
)
from bertvision.kinds import KINDS
from bertvision.models.adapter_pooler import AdapterPooler, AdapterPoolerConfig
from bertvision.store import load_split
from bertvision.tasks import get_task
from bertvision.tasks.base import carve_validation


def encoder_epoch_seconds(task_name: str, steps: int, batch_size: int = 32) -> tuple[float, int]:
    task = get_task(task_name)
    full = task.load("train")
    tr, _ = carve_validation(full.labels, len(full), 0.1, 0)
    train = full.subset(tr, "train")
    tok = load_tokenizer(None)
    enc = encode_split(tok, train, 128)
    model = load_model(resolve_encoder(None)[1], task.spec, torch.device("cpu"))
    opt = torch.optim.AdamW(model.parameters(), lr=5e-5)
    lengths = np.array([len(x) for x in enc["input_ids"]])
    batches = length_batches(lengths, batch_size, np.random.default_rng(0), window=batch_size * 50)
    model.train()
    t0 = time.perf_counter()
    for idx in batches[:steps]:
        loss = model(**collate(tok, enc, idx, "cpu", train.labels)).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    seconds = time.perf_counter() - t0
    done = sum(len(b) for b in batches[:steps])
    return seconds * len(train) / done, len(train)


def head_epoch_seconds(store: str, epochs: int = 5) -> tuple[float, int, int]:
    train = load_split(f"{store}/train")
    labels = train.labels.numpy()
    tr, _ = carve_validation(labels, len(labels), 0.1, 0)
    spec = train.manifest["extra"]["task_spec"]
    m = train.manifest
    model = AdapterPooler(AdapterPoolerConfig(num_hidden_states=m["num_hidden_states"], hidden_size=m["hidden_size"],
                                              num_outputs=KINDS[spec["kind"]].num_outputs(spec), task_kind=spec["kind"]))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x, y = train.hidden[tr], train.labels[tr]
    times = []
    for _ in range(epochs):
        t0 = time.perf_counter()
        for idx in torch.randperm(len(x)).split(64):
            loss = model.loss(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        times.append(time.perf_counter() - t0)
    return float(np.median(times)), len(x), model.num_parameters()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--store", required=True, help="store folder (with train/) of the same task")
    p.add_argument("--task", default="rte", help="task (default: rte)")
    p.add_argument("--ft-steps", type=int, default=20, help="encoder steps timed (default: 20)")
    p.add_argument("--json", default=None, help="also write the results here")
    args = p.parse_args()
    head, n_head, params = head_epoch_seconds(args.store)
    enc, n_enc = encoder_epoch_seconds(args.task, args.ft_steps)
    head_again, _, _ = head_epoch_seconds(args.store)  # before and after: noise shows as a spread
    res = {"task": args.task, "examples": n_enc, "head_parameters": params,
           "encoder_finetune_epoch_seconds": round(enc, 1),
           "head_epoch_seconds": [round(head, 3), round(head_again, 3)],
           "ratio": round(enc / max(head, head_again), 1)}  # fmt: skip
    assert n_head == n_enc and not math.isnan(enc)
    print(json.dumps(res, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)


if __name__ == "__main__":
    main()
