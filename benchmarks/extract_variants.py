"""Exploration behind the library loop's defaults: batch sizes, int8, torch.compile.

    BERTVISION_DATA=../shared/data python benchmarks/extract_variants.py 512

Runs on the first N RTE train pairs (default 512) with the bundled encoder and prints seq/s
for the naive loop, the library loop at several batch sizes, the int8 path, and the library
loop under torch.compile(dynamic=True) (first call, which compiles, and a second call).
"""

import sys
import time
import warnings

import numpy as np
import torch

from bertvision.encoders import tokenize
from bertvision.extract import HiddenStateExtractor
from bertvision.tasks import get_task

sys.path.insert(0, "benchmarks")
from extract_throughput import naive_loop  # noqa: E402

n = int(sys.argv[1]) if len(sys.argv) > 1 else 512
split = get_task("rte").load("train")
texts = [t[:n] for t in split.texts]
ex = HiddenStateExtractor(None, split.task.text_fields)
enc = tokenize(ex.tokenizer, texts[0], texts[1], max_length=128)
print(f"{n} pairs, mean {np.mean([len(x) for x in enc['input_ids']]):.1f} tokens, {torch.get_num_threads()} threads")


def timed(name, fn):
    t0 = time.perf_counter()
    out = fn()
    print(f"{name:>22}: {n / (time.perf_counter() - t0):7.1f} seq/s")
    return out


def lib(bs):
    ex.batch_size = bs
    return ex.encode(enc)


timed("naive", lambda: naive_loop(ex, texts, 128))
for bs in (8, 16, 32, 64, 128):
    timed(f"library batch {bs}", lambda bs=bs: lib(bs))
ref = lib(16)
fp32_model = ex.model
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    ex.model = torch.ao.quantization.quantize_dynamic(fp32_model, {torch.nn.Linear}, dtype=torch.qint8)
q = timed("int8 batch 16", lambda: lib(16))
a, b = ref.astype(np.float32), q.astype(np.float32)
cos = (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)
print("int8 mean cosine per layer:", cos.mean(0).round(4), "min", round(float(cos.min()), 4))
ex.model = torch.compile(fp32_model, dynamic=True)
timed("compile, first call", lambda: lib(16))
timed("compile, second call", lambda: lib(16))
