"""The tuned fine-tuning baseline (ray_jobs/baseline.py): a learning-rate grid as Tune trials,
the choice made on validation only, then seeds at that setting scored once on dev."""

import json
import subprocess
import sys

import pytest

from tests.conftest import own_ray_env, write_toy_task

pytest.importorskip("ray")
pytestmark = pytest.mark.ray


def test_the_baseline_is_chosen_on_validation_then_run_with_seeds(tmp_path, tiny_bert_dir):
    write_toy_task(tmp_path / "task", n_train=80, n_dev=24)  # 72 training + 8 validation examples
    out = tmp_path / "baseline"
    env = own_ray_env()  # a local Ray of its own, started only when there is something to run
    # Relative paths, as a user types them: each trial runs in a folder of its own, so the job
    # must pin them (a trial that read "task/toy.toml" from its own folder failed, and the
    # DataError it raised could not even travel back to the driver).
    proc = subprocess.run([sys.executable, "-m", "ray_jobs.baseline", "--task", "task/toy.toml", "--encoder", str(tiny_bert_dir),
                           "--lrs", "1e-3", "3e-4", "--max-epochs", "2", "--seeds", "0", "1", "--batch-size", "8",
                           "--grid-train-examples", "40", "--out", "baseline"], cwd=tmp_path,
                          capture_output=True, text=True, env=env, timeout=600)  # fmt: skip
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
    cfg = json.loads((out / "seed-1" / "config.json").read_text())
    assert cfg["finetune"]["lr"] == best["lr"] and cfg["finetune"]["epochs"] == best["epochs"] and cfg["finetune"]["seed"] == 1
    assert cfg["train_examples"] == 72 and cfg["validation_examples"] == 8  # the seeds train on all of it
    grid = json.loads((out / "grid/lr-0.001" / "config.json").read_text())
    assert grid["train_examples"] == 40 and grid["validation_examples"] == 8  # the grid on a subset
    assert summary["grid_train_examples"] == 40 and summary["train_examples"] is None
    # every whole epoch up to the chosen one is kept and scored, the chosen one is the result
    assert sorted(summary["by_epoch"]) == [f"{e:g}" for e in range(1, int(best["epochs"]) + 1)]
    assert summary["by_epoch"][f"{best['epochs']:g}"]["dev"] == summary["dev"]
    assert (out / "seed-0" / "checkpoint-e1" / "model.safetensors").is_file()
    # run again (as after an interruption): every finished run is kept, none is redone, and with
    # nothing left to run no Ray is started
    runs_done = {f: f.stat().st_mtime_ns for f in out.glob("*/**/metrics.json")}
    assert len(runs_done) == 4
    again = subprocess.run(proc.args, cwd=tmp_path, capture_output=True, text=True, env=env, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "local Ray" in proc.stdout and "local Ray" not in again.stdout  # nothing to run: no Ray started
    assert {f: f.stat().st_mtime_ns for f in out.glob("*/**/metrics.json")} == runs_done
    rerun = json.loads((out / "baseline.json").read_text())
    assert {k: v for k, v in rerun.items() if k != "wall_seconds"} == {k: v for k, v in summary.items() if k != "wall_seconds"}
    assert "chosen on validation" in proc.stdout
