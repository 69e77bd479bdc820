"""The tuned fine-tuning baseline (ray_jobs/baseline.py): a learning-rate grid as Tune trials,
the choice made on validation only, then seeds at that setting scored once on dev."""

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import write_toy_task

pytest.importorskip("ray")
pytestmark = pytest.mark.ray


def test_the_baseline_is_chosen_on_validation_then_run_with_seeds(tmp_path, tiny_bert_dir):
    task = write_toy_task(tmp_path / "task", n_train=80, n_dev=24)
    out = tmp_path / "baseline"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.run([sys.executable, "-m", "ray_jobs.baseline", "--task", str(task), "--encoder", str(tiny_bert_dir),
                           "--lrs", "1e-3", "3e-4", "--max-epochs", "2", "--seeds", "0", "1", "--batch-size", "8",
                           "--out", str(out)], capture_output=True, text=True, env=env, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "baseline.json").read_text())
    assert len(summary["grid"]) == 4  # 2 learning rates x epochs 1 and 2, validation only
    best = max(summary["grid"], key=lambda r: r["score"])
    assert summary["chosen"] == {"lr": best["lr"], "epochs": best["epochs"], "validation_score": best["score"]}
    for lr in (1e-3, 3e-4):  # the grid never scored dev
        for meta in json.loads((out / f"grid/lr-{lr:g}" / "metrics.json").read_text()).values():
            assert "dev" not in meta
    runs = summary["runs"]
    assert set(runs) == {"0", "1"} and all("dev" in r for r in runs.values())
    accs = [r["dev"]["accuracy"] for r in runs.values()]
    assert summary["dev"]["accuracy"]["mean"] == pytest.approx(sum(accs) / 2)
    cfg = json.loads((out / "seed-1" / "config.json").read_text())["finetune"]
    assert cfg["lr"] == best["lr"] and cfg["epochs"] == best["epochs"] and cfg["seed"] == 1
    assert "chosen on validation" in proc.stdout
