"""`bertvision run` (the pipeline, `bertvision.pipeline` and `ray_jobs/pipeline.py`), its report
and `bertvision show`: a tiny run end to end on a real in-process Ray, its rerun (every stage
reused), a changed setting (only the stages that depend on it redone), the report's parts, and
the stage rule itself without Ray."""

import base64
import json
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from bertvision.errors import ConfigError
from bertvision.pipeline import PipelineConfig, Stages, store_splits
from tests.conftest import bertvision_cli, own_ray_env, write_toy_task


def _cli(*args, check=True, timeout=900, env=None) -> subprocess.CompletedProcess:
    """A CLI run on the shared head (``env``: its ``cli_env``), else on a local Ray of its own."""
    proc = subprocess.run([*bertvision_cli(), *map(str, args)], capture_output=True, text=True,
                          env=env or own_ray_env(), timeout=timeout)  # fmt: skip
    if check:
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc


def _bv(*args, check=True) -> subprocess.CompletedProcess:
    """A command run in this process (`bertvision.cli.main`, what the console script calls): no
    interpreter and torch to start, for the short commands run on a finished run."""
    import contextlib
    import io

    from bertvision.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in args])
    assert code == 0 or not check, err.getvalue()[-2000:]
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


RUN_ARGS = ("--seeds", 0, 1, "--trials", 3, "--initial-points", 2, "--head-epochs", 3, "--top-k", 2,
            "--fractions", 0.5)  # fmt: skip


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_bert_dir):
    """A whole pipeline run on a toy pair task with a tiny random BERT: 2 seeds, 3 trials, a
    data-efficiency point at half the training data."""
    pytest.importorskip("ray")
    root = tmp_path_factory.mktemp("run")
    task = write_toy_task(root / "toy", n_train=120, n_dev=30)
    out = root / "run"
    proc = _cli("run", "--task", task, "--encoder", tiny_bert_dir, *RUN_ARGS, "--out", out)
    return task, out, proc


@pytest.mark.ray
def test_a_run_writes_every_stage_and_says_its_headline(tiny_run):
    task, out, proc = tiny_run
    stages = {p.stem: json.loads(p.read_text()) for p in (out / "stages").glob("*.json")}
    assert set(stages) == {"majority", "finetune", "store-cls", "tune", "heads", "ensemble", "efficiency-0.5"}
    assert all(s["done"] and s["wall_seconds"] >= 0 for s in stages.values())
    summary = json.loads((out / "pipeline.json").read_text())
    assert summary["status"] == "done" and summary["report"] == str(out / "report.html")
    assert not list(out.glob(".bertvision-*"))  # the folder's lock and its local Ray's record, gone
    # the store is the first seed's 1-epoch checkpoint; the heads are the best trial, every seed
    manifest = json.loads((out / "store" / "cls" / "train" / "_manifest.json").read_text())
    assert manifest["checkpoint"].endswith("finetune/seed-0/checkpoint-e1")
    board = json.loads((out / "tune" / "leaderboard.json").read_text())
    heads = json.loads((out / "heads" / "config.json").read_text())["train"]
    assert len(board) == 3 and heads["head"] == board[0]["config"]["head"] and heads["seeds"] == [0, 1]
    # the efficiency point trained both ways on half the training part, and nothing more
    eff = stages["efficiency-0.5"]["result"]
    n = json.loads((out / "heads" / "config.json").read_text())["train_rows"]
    assert eff["examples"] == round(0.5 * n)
    ft_cfg = json.loads((out / "efficiency-0.5" / "finetune" / "seed-0" / "config.json").read_text())
    assert ft_cfg["finetune"]["train_examples"] == eff["examples"]
    # the headline, in words, against the majority class
    assert "report: " + str(out / "report.html") in proc.stdout
    words = " ".join(proc.stdout.split())
    assert "dev accuracy / macro_f1: the best head scores" in words and "over 2 seed(s)" in words
    assert re.search(r"always '[01]', [\d.]+ / [\d.]+\. The head (is NO BETTER than|beats) the majority class", words)


@pytest.mark.ray
def test_the_console_holds_each_stages_lines_and_ray_s_output_goes_to_the_logs(tiny_run):
    """Before: Tune's tables, the trials' bars behind Ray's prefixes, a TensorBoard hint into the
    local Ray's temporary folder, Ray's own logging on stderr; now a start and an end line per
    stage (its time and result), the rest in RUN/logs/<stage>.log."""
    _, out, proc = tiny_run
    console = proc.stdout + proc.stderr
    for noise in ("driver_artifacts", "bvray-", "Traceback", "Exception ignored", "╭", "+----", "(pid=", "INFO"):
        assert noise not in console, noise
    assert proc.stderr == ""
    for name in json.loads((out / "pipeline.json").read_text())["ran"]:
        assert f"{name}: running\n" in proc.stdout
        assert re.search(rf"^{name}: done in \d+ s; \S", proc.stdout, re.M), name
    assert re.search(r"^tune: done in \d+ s; 3 trials, the best \(trial-\w+\) [\d.]+ on validation$", proc.stdout, re.M)
    logs = {p.name: p.read_text() for p in (out / "logs").iterdir()}
    assert "Configuration for experiment" in logs["tune.log"] and "local Ray of this process" in logs["finetune.log"]
    assert not re.search(r"\x1b\[", "".join(logs.values()))  # no colour codes


class _Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.images, self.links, self.rows, self._row, self._in = [], [], [], None, None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.images.append(a.get("src", ""))
        for key in ("src", "href"):
            if key in a and tag != "img":
                self.links.append(a[key])
        if tag == "tr":
            self._row = []
        if tag in ("td", "th") and self._row is not None:
            self._in = []

    def handle_data(self, data):
        if self._in is not None:
            self._in.append(data)

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._row is not None and self._in is not None:
            self._row.append(" ".join("".join(self._in).split()))
            self._in = None
        if tag == "tr" and self._row is not None:
            self.rows.append(self._row)
            self._row = None


@pytest.mark.ray
def test_the_report_is_one_self_contained_page_with_every_part(tiny_run):
    _, out, _ = tiny_run
    html = (out / "report.html").read_text()
    page = _Page()
    page.feed(html)
    # every figure embedded and a real PNG; nothing fetched from elsewhere
    assert len(page.images) >= 6
    for src in page.images:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html)
    names = [r[0] for r in page.rows if r]
    for method in ("Majority class", "Full fine-tuning", "Best head", "Ensemble"):
        assert any(n.startswith(method) for n in names), names
    header = next(r for r in page.rows if r and r[0] == "method")
    assert header[1:3] == ["dev accuracy (%)", "dev macro_f1 (%)"]
    assert header[-5:] == ["runs", "wall time", "device time", "stored", "trainable parameters"]
    head = next(r for r in page.rows if r and r[0].startswith("Best head"))
    assert "±" in head[1] and head[3] == "2"  # mean ± spread over the 2 seeds
    for part in ("Data efficiency", "Learning curves", "layer weights", "Search trials", "Embeddings as pictures"):
        assert part in html
    # the report command writes the same page elsewhere
    again = out.parent / "again.html"
    proc = _cli("report", out, "--out", again)
    assert again.is_file() and "report: " + str(again) in proc.stdout


@pytest.mark.ray
def test_a_rerun_reuses_every_stage_and_a_changed_setting_redoes_only_what_reads_it(tiny_run, tiny_bert_dir):
    task, out, _ = tiny_run
    before = {p.stem: json.loads(p.read_text()) for p in (out / "stages").glob("*.json")}
    logs = {p: p.read_text() for p in (out / "logs").iterdir()}
    proc = _cli("run", "--task", task, "--encoder", tiny_bert_dir, *RUN_ARGS, "--out", out)
    assert "ran: nothing; every stage was finished" in proc.stdout
    assert proc.stdout.count("finished earlier with these settings; reused") == len(before)
    assert {p: p.read_text() for p in (out / "logs").iterdir()} == logs  # nothing ran: no Ray started, no log
    # the ensemble's size is the ensemble's alone: the search, heads and stores stay
    args = list(RUN_ARGS)
    args[args.index("--top-k") + 1] = 1
    proc = _cli("run", "--task", task, "--encoder", tiny_bert_dir, *args, "--out", out)
    assert "ensemble: --top-k changed 2 -> 1; redoing it from scratch" in proc.stdout  # the option, not a group
    after = {p.stem: json.loads(p.read_text()) for p in (out / "stages").glob("*.json")}
    assert after["ensemble"]["started"] > before["ensemble"]["started"]
    for name in ("majority", "finetune", "store-cls", "tune", "heads", "efficiency-0.5"):
        assert after[name] == before[name], name
    ens = json.loads((out / "ensemble" / "ensemble.json").read_text())
    assert len([k for k in ens["members"] if k != "encoder"]) == 1


@pytest.mark.ray
def test_show_draws_one_stored_example_and_names_what_is_wrong(tiny_run, tmp_path):
    _, out, _ = tiny_run
    store = out / "store" / "cls"
    first = json.loads((store / "dev" / "_manifest.json").read_text())["shards"][0]["first_id"]
    png = tmp_path / "ex.png"
    proc = _cli("show", store, "--id", first, "--out", png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and str(png) in proc.stdout
    proc = _cli("show", store, "--id", "no-such-id", "--out", tmp_path / "x.png", check=False)
    assert proc.returncode == 1 and "no-such-id" in proc.stderr and str(store) in proc.stderr
    assert not (tmp_path / "x.png").exists()
    proc = _cli("show", tmp_path, "--id", first, "--out", tmp_path / "x.png", check=False)
    assert proc.returncode == 1 and "not a store" in proc.stderr


@pytest.mark.ray
def test_the_report_renders_in_a_real_browser(tiny_run, tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:  # CI installs it (.ci/run): there a missing browser is a failure, not a skip
        (pytest.fail if os.environ.get("CI") else pytest.skip)("no chromium here (Debian package 'chromium')")
    _, out, _ = tiny_run
    proc = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                           f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", (out / "report.html").as_uri()],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Best head" in proc.stdout and proc.stdout.count("data:image/png;base64,") >= 6


@pytest.fixture(scope="module")
def ray_predictions(tiny_run, tmp_path_factory, shared_ray):
    """The tiny run with its store re-embedded in 8-row shards (the chunks predictions are batched
    in; the pipeline's are bigger than any test input), its dev file predicted by the local command
    and by the Ray Data job in pieces of 8 rows (--piece-rows 5, rounded up): 4 parts."""
    from bertvision.config import EmbedConfig
    from bertvision.embed import embed
    from bertvision.predict import predict

    task, out, _ = tiny_run
    root = tmp_path_factory.mktemp("predict")
    run = root / "run"
    run.mkdir()
    for entry in out.iterdir():
        if entry.name != "store":
            (run / entry.name).symlink_to(entry)
    manifest = out / "store" / "cls" / "train" / "_manifest.json"
    checkpoint = json.loads(manifest.read_text())["checkpoint"]
    cfg = EmbedConfig(task=str(task), checkpoint=checkpoint, splits=("train",), shard_rows=8)
    embed(cfg, run / "store" / "cls")
    dev = task.parent / "dev.csv"
    predict(str(run), str(dev), None, str(root / "local.parquet"))
    parts = root / "parts"
    args = ("predict", run, "--ray", "--input", dev, "--out", parts, "--piece-rows", 5)
    proc = _cli(*args, env=shared_ray.cli_env)
    return root / "local.parquet", parts, args, proc


def _rows(path: Path) -> dict:
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pydict()


@pytest.mark.ray
def test_the_ray_prediction_job_writes_the_local_commands_rows(ray_predictions):
    local, parts, _, proc = ray_predictions
    manifest = json.loads((parts / "_manifest.json").read_text())
    assert manifest["settings"]["piece_rows"] == 8 and manifest["rows"] == 30
    assert [p["part"] for p in manifest["pieces"]] == [f"part-{k:05d}.parquet" for k in range(4)]
    assert sorted(p.name for p in parts.glob("part-*")) == [p["part"] for p in manifest["pieces"]]
    assert [p["stop"] - p["start"] for p in manifest["pieces"]] == [8, 8, 8, 6]
    expected = _rows(local)
    assert set(expected) == {"id", "label", "prob_0", "prob_1"}
    assert expected["id"] == [str(i) for i in range(30)]
    assert _rows(parts) == expected  # ids, labels and probabilities bit for bit (CPU, fp32)
    assert f"{parts}: 30 rows in 4 part(s) (ensemble), 30 predicted now" in proc.stdout


@pytest.mark.ray
def test_a_resubmitted_prediction_job_writes_only_the_missing_parts(ray_predictions, shared_ray):
    local, parts, args, _ = ray_predictions
    # a job killed while writing part 2: no part-00002 (written under a temporary name), no manifest
    (parts / "part-00002.parquet").unlink()
    (parts / "_manifest.json").unlink()
    (parts / ".part-00002.parquet.tmp").write_bytes(b"half a part")
    kept = {p.name: p.stat().st_mtime_ns for p in parts.glob("part-*")}
    proc = _cli(*args, env=shared_ray.cli_env)
    assert "30 rows in 4 part(s) (ensemble), 8 predicted now" in proc.stdout
    assert {p.name: p.stat().st_mtime_ns for p in parts.glob("part-*") if p.name in kept} == kept
    written = sorted(p.name for p in parts.iterdir() if not p.name.startswith("_"))
    assert written == [f"part-{k:05d}.parquet" for k in range(4)]  # the temporary file gone
    rows = _rows(parts)
    assert sorted(rows["id"], key=int) == [str(i) for i in range(30)] and rows == _rows(local)
    # once complete, nothing is written again; another model is refused, nothing touched
    kept = {p.name: p.stat().st_mtime_ns for p in parts.glob("part-*")}
    assert "already complete; nothing predicted" in _cli(*args, env=shared_ray.cli_env).stdout
    proc = _cli(*args, "--model", "head", env=shared_ray.cli_env, check=False)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("bertvision: error:")]
    assert proc.returncode == 1 and len(errors) == 1, proc.stderr[-2000:]
    refused = f"bertvision: error: --out {parts} holds the predictions of another job "
    assert errors[0].startswith(refused + "(part-00000.parquet: model: 'ensemble' -> 'head'; ")
    assert errors[0].endswith("give another --out, or delete it to start over")
    assert {p.name: p.stat().st_mtime_ns for p in parts.glob("part-*")} == kept


def test_the_run_options_are_checked_before_anything_starts(tmp_path):
    for bad in ({"fractions": (1.5,)}, {"fractions": (0.5, 0.5)}, {"seeds": ()}, {"trials": 0}, {"selections": ("x",)}):
        with pytest.raises(ConfigError):
            PipelineConfig(task="rte", **bad)
    proc = _cli("run", "--task", "rte", "--fractions", "1", "--out", tmp_path / "r", check=False)
    assert proc.returncode == 1 and "--fractions" in proc.stderr and not (tmp_path / "r").exists()


def test_stages_reuse_resume_and_redo_with_what_depends_on_them(tmp_path):
    calls, lines = [], []
    stages = Stages(tmp_path, lines.append)

    def step(name):
        def fn(folder: Path):
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "out.txt").write_text(name)
            calls.append(name)
            return {"name": name}

        return fn

    def run_all(a_setting, b_setting, stages):
        stages.run("a", {"x": a_setting}, (), step("a"))
        stages.run("b", {"y": b_setting}, ("a",), step("b"))

    run_all(1, 1, stages)
    assert calls == ["a", "b"]
    run_all(1, 1, Stages(tmp_path, lines.append))  # unchanged: nothing runs
    assert calls == ["a", "b"] and sum("reused" in line for line in lines) == 2
    run_all(1, 2, Stages(tmp_path, lines.append))  # b's own setting: b alone
    assert calls == ["a", "b", "b"] and "b: y changed 1 -> 2; redoing it from scratch" in lines
    run_all(2, 2, Stages(tmp_path, lines.append))  # a's setting: a, and b after it
    assert calls[-2:] == ["a", "b"] and any("b: redone before it: a" in line for line in lines)
    # an unfinished stage (its process killed) is resumed, not started from scratch
    rec = json.loads((tmp_path / "stages" / "b.json").read_text())
    (tmp_path / "stages" / "b.json").write_text(json.dumps({**rec, "done": False}))
    (tmp_path / "b" / "partial").write_text("kept")
    run_all(2, 2, Stages(tmp_path, lines.append))
    assert lines[-2:] == ["b: resuming an unfinished run", "b: done in 0 s"] and (tmp_path / "b" / "partial").exists()
    # a folder that no stage record describes is never deleted
    (tmp_path / "stages" / "b.json").unlink()
    with pytest.raises(ConfigError, match="no stage record"):
        run_all(2, 2, Stages(tmp_path, lines.append))
    assert (tmp_path / "b" / "out.txt").exists()


def test_a_stage_s_other_output_goes_to_its_log_and_a_failed_one_says_which(tmp_path, capsys):
    """Under a `RunOutput` (`bertvision run`), what a stage prints (Ray's tables, logging, its
    workers' lines) goes to RUN/logs/<stage>.log, shown only with --verbose; a failed stage
    says where its log is, and the traceback is there, not on the console."""
    import logging
    import sys

    from bertvision.errors import RunError
    from bertvision.runtime import RunOutput, warn

    ray_like = logging.getLogger("test.ray_like")  # a handler made before, as Ray's is
    ray_like.addHandler(logging.StreamHandler(sys.stderr))

    def noisy(folder: Path) -> dict:
        print("╭── Tune's table ──╮")
        ray_like.warning("\x1b[36m(pid=1)\x1b[0m a worker's line")
        return {}

    def failing(folder: Path) -> dict:
        print("the trial's own output")
        warn("trial-1 failed")  # as ray_jobs.common tells a failed trial: on the console
        raise RunError("ValueError while running the search: bad")

    logs = tmp_path / "logs"
    with RunOutput(logs) as output:
        stages = Stages(tmp_path, output=output)
        stages.run("noisy", {}, (), noisy)
        with pytest.raises(RunError):
            stages.run("failing", {}, (), failing)
    console = capsys.readouterr()
    assert console.out.splitlines() == ["noisy: running", "noisy: done in 0 s", "failing: running",
                                        f"failing: failed after 0 s; see {logs / 'failing.log'}"]  # fmt: skip
    assert console.err == "bertvision: warning: trial-1 failed\n"
    assert "Tune's table" in (logs / "noisy.log").read_text() and "(pid=1) a worker's line\n" in (logs / "noisy.log").read_text()
    failed = (logs / "failing.log").read_text()
    assert "the trial's own output" in failed and "Traceback" in failed and "RunError: ValueError" in failed
    with RunOutput(logs, show=True) as output:  # --verbose: on the console too
        Stages(tmp_path, output=output).run("shown", {}, (), noisy)
    console = capsys.readouterr()
    assert "Tune's table" in console.out and "a worker's line" in console.err and "shown: done in 0 s" in console.out
    assert "Tune's table" in (logs / "shown.log").read_text()
    ray_like.handlers.clear()


def test_a_changed_setting_is_named_by_its_option_with_old_and_new_values(tmp_path):
    """A stage's settings are configs: the message names the run's option that changed (before:
    "tune: settings changed: search" for --trials), else the setting's path, and the values."""
    lines = []

    def tune(trials: int, device: str | None, options: dict) -> None:
        Stages(tmp_path, lines.append, options).run("tune", {"search": {"trials": trials, "device": device}}, (),
                                                    lambda d: {})  # fmt: skip

    tune(24, "cpu", {})
    tune(30, None, {"trials": (24, 30), "gpus_per_trial": (0.0, 1.0)})  # the device follows --gpus-per-trial
    assert lines[-2] == 'tune: search.device changed "cpu" -> null, --trials changed 24 -> 30; redoing it from scratch'


def _fake_run(folder: Path, head, majority, full, *, metrics=("accuracy",), kind="classification", evals=("dev",),
              grid=None, **spec) -> Path:  # fmt: skip
    """The files `headline` and the report read, for one sentence task: ``head``, ``majority`` and
    ``full`` are a score for each metric (one number: the same for all); ``spec``: more of the task's."""
    per = lambda v: dict(zip(metrics, v if isinstance(v, tuple) else (v,) * len(metrics), strict=True))  # noqa: E731
    spec = {"name": "fake", "title": "Fake", "kind": kind, "metrics": list(metrics), "eval_splits": list(evals),
            **({"labels": ["a", "b"]} if kind == "classification" else {}), **spec}  # fmt: skip
    cfg = PipelineConfig(task="fake", seeds=(0, 1, 2))
    from dataclasses import asdict

    (folder / "stages").mkdir(parents=True)
    (folder / "heads").mkdir()
    (folder / "finetune").mkdir()
    (folder / "pipeline.json").write_text(json.dumps({"config": asdict(cfg), "task": spec}))
    rule = "always 'a'" if kind == "classification" else "always the training part's mean score"
    (folder / "stages" / "majority.json").write_text(json.dumps(
        {"done": True, "result": {"rule": rule, "scores": {s: per(majority) for s in evals}}}))  # fmt: skip
    stats = lambda v: {m: {"mean": x, "std": 0.01} for m, x in per(v).items()}  # noqa: E731
    (folder / "heads" / "summary.json").write_text(json.dumps({"seeds": [0, 1, 2], "runs": [], "train_seconds": 1.0,
                                                                **{s: stats(head) for s in evals}}))  # fmt: skip
    (folder / "finetune" / "baseline.json").write_text(json.dumps(
        {"chosen": {"lr": 1e-4, "epochs": 1.0, "validation_score": None}, "seeds": [0, 1, 2], "train_seconds": 3.0,
         "by_epoch": {}, "grid": grid or [{"lr": 1e-4, "epochs": e, "score": 0.6} for e in (1.0, 2.0)],
         **{s: stats(full) for s in evals}}))  # fmt: skip
    return folder


def test_the_headline_says_plainly_when_the_head_is_no_better_than_the_majority_class(tmp_path):
    from bertvision.report import headline

    text = headline(_fake_run(tmp_path / "low", head=0.52, majority=0.527, full=0.55))
    assert "NO BETTER than the majority class" in text and "52.0 ± 1.0" in text and "52.7" in text
    text = headline(_fake_run(tmp_path / "high", head=0.85, majority=0.50, full=0.86))
    assert "NO BETTER" not in text and "within the spread of full fine-tuning (-1.0 points" in text
    text = headline(_fake_run(tmp_path / "above", head=0.90, majority=0.50, full=0.80))
    assert "above full fine-tuning (+10.0 points" in text


def test_the_headline_judges_the_floor_metric_by_metric_and_names_the_metric(tmp_path):
    """A small user task once ended "... always 'positive', 58.8 / 37.0. The head beats the majority
    class by 10.5 points": the mean of the metrics hid that its accuracy was the majority rate."""
    from bertvision.report import headline

    two = ("accuracy", "macro_f1")
    text = headline(_fake_run(tmp_path / "even", head=(0.588, 0.580), majority=(0.588, 0.370), full=0.6, metrics=two))
    assert "The head is NO BETTER than the majority class on accuracy (58.8 ± 1.0 against 58.8), though above it " \
           "on macro_f1 (58.0 ± 1.0 against 37.0)" in text and "beats" not in text  # fmt: skip
    text = headline(_fake_run(tmp_path / "both", head=(0.80, 0.78), majority=(0.60, 0.37), full=(0.8, 0.8), metrics=two))
    assert "The head beats the majority class on accuracy by 20.0 points and on macro_f1 by 41.0 points and is " \
           "within the spread of full fine-tuning on the mean of accuracy and macro_f1" in text  # fmt: skip


def test_a_regression_headline_says_what_its_floor_is_in_words(tmp_path):
    """Not "undefined / undefined": a constant prediction has no correlation (it counts as 0)."""
    from bertvision.report import headline

    corr = ("pearson", "spearman")
    text = headline(_fake_run(tmp_path / "reg", head=0.8, majority=(None, None), full=0.8, metrics=corr, kind="regression"))
    assert "always the training part's mean score: a constant prediction has no correlation" in text
    assert "undefined" not in text and "beats a constant prediction on pearson by 80.0 points" in text
    text = headline(_fake_run(tmp_path / "neg", head=-0.1, majority=(None, None), full=0.8, metrics=corr, kind="regression"))
    assert "NO BETTER than a constant prediction on pearson (-10.0 ± 1.0 against 0.0) and on spearman" in text


def test_the_report_names_a_test_part_carved_from_train(tmp_path):
    from bertvision.report import headline, write_report

    carved = {"split": "heldout", "from": "train", "fraction": 0.1, "seed": 0}
    run = _fake_run(tmp_path / "carved", head=0.9, majority=0.5, full=0.8, evals=("heldout",), carved_test=carved)
    words = "heldout (the test part carved from train: 10%, seed 0)"
    assert headline(run).startswith(f"Fake, {words} accuracy: the best head scores 90.0 ± 1.0")
    html = " ".join(write_report(run).read_text().split())
    assert f"scored once on {words}" in html and f"{words} was scored once at the end" in html


def test_a_run_with_no_held_out_split_says_so_instead_of_crashing(tmp_path):
    """A task with only a train file has no eval split: `headline` failed with an IndexError."""
    from bertvision.report import headline, write_report

    run = _fake_run(tmp_path / "none", head=0.9, majority=0.5, full=0.8, evals=())
    assert headline(run) == ("Fake: this run has no held-out split to score on (validation only), so it states no "
                             "result.")  # fmt: skip
    html = " ".join(write_report(run).read_text().split())
    assert "no held-out split to score on (validation only)" in html and "Best head" in html


def test_a_single_fine_tuning_point_is_a_line_of_text_not_a_plot(tmp_path):
    from bertvision.report import collect, learning_curves, write_report

    one = [{"lr": 1e-4, "epochs": 1.0, "score": 0.61234, "seed_scores": [0.6, 0.61, 0.63]}]
    run = _fake_run(tmp_path / "one", head=0.9, majority=0.5, full=0.8, grid=one)
    assert learning_curves(collect(run)) is None  # no trials, and no plot of one point
    html = " ".join(write_report(run).read_text().split())
    assert "Fine-tuning ran one setting, lr 0.0001 for 1 epoch(s): validation selection score 0.6123 (mean over " \
           "3 seeds)." in html and "Right: fine-tuning" not in html  # fmt: skip
    run = _fake_run(tmp_path / "two", head=0.9, majority=0.5, full=0.8)  # two points: a plot
    assert learning_curves(collect(run)) is not None and "Fine-tuning ran one setting" not in write_report(run).read_text()


def test_cls_pictures_are_standardised_per_dimension_beside_the_raw_view(tmp_path, monkeypatch):
    """Each hidden dimension's own offset dominates the raw values, so two examples of different
    classes look alike there; standardised over the split, their difference shows."""
    import numpy as np

    from bertvision import report
    from bertvision.store import StoreWriter
    from tests.test_store import make_spec, write_shards

    run = _fake_run(tmp_path / "run", head=0.9, majority=0.5, full=0.8)
    (run / "stages" / "tune.json").write_text(json.dumps({"done": True, "result": {"selection": "cls"}}))
    rng = np.random.default_rng(0)
    rows, layers, width = 40, 3, 8
    labels = (np.arange(rows) >= 30).astype(int)  # the first 30 rows of class 0
    offsets = rng.uniform(-50, 50, (layers, width))
    hidden = (offsets + (2 * labels[:, None, None] - 1) + 0.1 * rng.standard_normal((rows, layers, width)))
    writer = StoreWriter(run / "store" / "cls" / "dev", make_spec(num_hidden_states=layers, hidden_size=width), rows)
    write_shards(writer, ([f"ex-{i}" for i in range(rows)], hidden.astype(np.float16), labels))
    writer.finish()
    drawn, draw = [], report.draw_states
    monkeypatch.setattr(report, "draw_states", lambda *a, **k: drawn.append(draw(*a, **k)) or drawn[-1])
    examples = report.example_images(report.collect(run), n=2)
    panels = [[np.asarray(ax.images[0].get_array()) for ax in f.axes if ax.images] for f in drawn]
    assert [len(p) for p in panels] == [2, 2]  # standardised, and the raw view beside it
    (std_a, raw_a), (std_b, raw_b) = panels
    cosine = lambda x, y: float((x * y).sum() / np.linalg.norm(x) / np.linalg.norm(y))  # noqa: E731
    assert cosine(raw_a, raw_b) > 0.99 and cosine(std_a, std_b) < -0.9
    assert np.abs(std_a).max() <= 3 and np.abs(raw_a).max() <= 1
    assert {e["label"] for e in examples} == {"a", "b"}  # of different classes, though the first 24 are all 'a'


def test_make_run_goes_offline_only_where_the_data_is_local(tmp_path):
    """Without ../shared/data, `make run` fetches the task from the Hub: the Makefile's offline mode,
    always on, stopped it at once on a fresh machine (OfflineModeIsEnabled)."""
    make = shutil.which("make")
    if make is None:
        pytest.skip("no make here")
    (tmp_path / "data" / "glue").mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "MAKE", "MFLAGS", "BERTVISION_DATA"))}

    def command(shared: Path) -> str:
        proc = subprocess.run([make, "-n", "-C", str(Path(__file__).parents[1]), "run", f"SHARED_DATA={shared}"],
                              capture_output=True, text=True, env=env, check=True)  # fmt: skip
        return next(line for line in proc.stdout.splitlines() if "bertvision run --task" in line)

    assert command(tmp_path / "data").startswith("HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 ")
    assert "OFFLINE" not in command(tmp_path / "nothing-here")


@pytest.mark.ray
def test_a_span_task_runs_end_to_end_with_span_heads_and_ensembles(tmp_path, bundled_tokenizer, shared_ray):
    """SQuAD 2.0 through the same command: token store, span heads, max and mean ensembles,
    the no-answer baseline, and the answer's tokens boxed in the drawn window."""
    pytest.importorskip("ray")
    import torch
    from transformers import BertConfig, BertModel

    from tests.test_squad_pipeline import _squad_file

    data = tmp_path / "data"
    (data / "squad2").mkdir(parents=True)
    (data / "glue").mkdir()
    _squad_file(data / "squad2" / "train-v2.0.json", 6, 0)
    _squad_file(data / "squad2" / "dev-v2.0.json", 2, 1)
    torch.manual_seed(0)
    encoder = tmp_path / "tiny512"  # windows of 384 tokens need the positions
    BertModel(BertConfig(vocab_size=len(bundled_tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=37, max_position_embeddings=512)).save_pretrained(encoder)  # fmt: skip
    bundled_tokenizer.save_pretrained(encoder)
    out = tmp_path / "run"
    proc = _cli("run", "--task", "squad2", "--data-dir", data, "--encoder", encoder, "--seeds", 0, 1, "--trials", 2,
                "--initial-points", 1, "--head-epochs", 2, "--top-k", 1, "--out", out)  # fmt: skip
    stages = {p.stem for p in (out / "stages").glob("*.json")}
    assert stages == {"majority", "finetune", "store-tokens", "tune", "heads", "ensemble"}
    page = _Page()
    page.feed((out / "report.html").read_text())
    names = [r[0] for r in page.rows if r]
    for method in ("Always no answer", "Full fine-tuning", "Best head", "Ensemble (max)", "Ensemble (mean)"):
        assert any(n.startswith(method) for n in names), names
    header = next(r for r in page.rows if r and r[0] == "method")
    assert header[1:3] == ["dev exact", "dev f1"]
    words = " ".join(proc.stdout.split())
    assert "dev exact / f1: the best head scores" in words and "always no answer" in words
    # a drawn window with its answer boxed, through show
    window = json.loads((out / "store" / "tokens" / "dev" / "_manifest.json").read_text())["shards"][0]["first_id"]
    _cli("show", out / "store" / "tokens", "--id", window, "--out", tmp_path / "w.png")
    assert (tmp_path / "w.png").read_bytes()[:4] == b"\x89PNG"
    # predict on dev (its answers unseen) answers and scores as the run reported: seed 0's head, the
    # ensemble's method with the better validation F1
    dev = data / "squad2" / "dev-v2.0.json"
    ens = json.loads((out / "ensemble" / "ensemble.json").read_text())
    method = max(ens["ensembles"], key=lambda m: ens["ensembles"][m]["validation"]["f1"])
    reported = {"head": (out / "heads" / "seed-0", "predictions-dev.json"),
                "ensemble": (out / "ensemble", f"predictions-{method}-dev.json")}  # fmt: skip
    for model, (folder, saved) in reported.items():
        pred = tmp_path / f"{model}.json"
        said = _bv("predict", out, "--split", "dev", "--model", model, *(("--seed", 0) if model == "head" else ()),
                    "--out", pred).stdout  # fmt: skip
        assert json.loads(pred.read_text()) == json.loads((folder / saved).read_text()), model
        got = json.loads(_bv("squad-eval", dev, pred, "--na-prob-file", tmp_path / f"{model}.na_prob.json").stdout)
        want = json.loads((folder / ("ensemble.json" if model == "ensemble" else "metrics.json")).read_text())
        want = want["ensembles"][method]["dev"] if model == "ensemble" else want["dev"]
        assert (got["exact"], got["f1"]) == (want["exact"], want["f1"]), (model, got, want)
        assert (model == "ensemble") == (f"ensemble ({method}" in said), said
    # in this process, from text: the checkpoint's own head, windows through it in chunks of 3 (a
    # question's windows in two chunks): its spans and no-answer scores are those of the stored
    # logits, and its answers score as the ensemble's encoder member did
    import numpy as np
    from scipy.special import expit

    from bertvision.metrics.squad_v2 import read_gold, squad_v2_scores
    from bertvision.predict import load_model
    from bertvision.spans.answers import postprocess
    from bertvision.spans.data import WindowSet
    from bertvision.store import load_split
    from bertvision.tasks import get_task

    rows = [{"id": ex.id, "question": ex.question, "context": ex.context}
            for ex in get_task("squad2", str(data)).load("dev").examples]  # fmt: skip
    rm = load_model(out, "encoder", device="cpu")
    rm.chunk = 3
    answers = rm.predict(rows)
    assert [a["id"] for a in answers] == [r["id"] for r in rows]
    got = squad_v2_scores(read_gold(dev), {a["id"]: a["answer"] for a in answers})
    assert (got["exact"], got["f1"]) == (ens["members"]["encoder"]["dev"]["exact"], ens["members"]["encoder"]["dev"]["f1"])
    stored = WindowSet.from_split(load_split(out / "store" / "tokens" / "dev"))
    ref = postprocess(stored.example_ids, stored.offsets, [x[:, 0] for x in stored.encoder_logits],
                      [x[:, 1] for x in stored.encoder_logits], {r["id"]: r["context"] for r in rows},
                      max_answer_tokens=rm.max_answer_tokens)  # fmt: skip
    diffs = np.array([ref.null_diff[r["id"]] for r in rows]) - rm.threshold
    assert np.allclose([a["no_answer_probability"] for a in answers], expit(diffs), rtol=1e-5, atol=0)
    assert [a["answer"] == "" for a in answers] == list(diffs > 0)
    rm.threshold = np.inf  # always the best span: its text as from the stored logits
    assert [a["answer"] for a in rm.predict(rows)] == [ref.text[r["id"]] for r in rows]


@pytest.mark.ray
def test_the_store_holds_a_span_tasks_own_validation_split():
    """The article split of SQuAD dev selects on its own validation split, not on a carve of
    train, so the run's store must hold it (a real run once failed in the tune stage without it);
    tasks that carve validation from train store train and their eval splits only."""
    from bertvision.tasks import get_task

    articles, squad, rte = (get_task(name).spec for name in ("squad2-articles", "squad2", "rte"))
    assert store_splits(articles, ("test",)) == ("train", "validation", "test")
    assert store_splits(squad, ("dev",)) == ("train", "dev")
    assert store_splits(rte, ("dev",)) == ("train", "dev")


PEER_ARGS = ("--max-epochs", "2", "--max-steps", "20")


def test_peers_join_the_reports_results_table(tiny_run):
    """benchmarks/peers.py: a logistic regression on the pretrained encoder's sentence embeddings (and
    LoRA and SetFit where the 'peers' extra is installed), on the run's carve, become rows of
    the run's report."""
    import sys

    _, out, _ = tiny_run
    script = Path(__file__).parents[1] / "benchmarks" / "peers.py"
    peers = ["logreg"] + (["lora"] if _has("peft") else []) + (["setfit"] if _has("setfit") else [])
    # one process for all (short runs: the rows and files are what is checked here)
    proc = subprocess.run([sys.executable, str(script), *peers, "--run", str(out), *PEER_ARGS], capture_output=True,
                          text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    for peer in peers:
        result = json.loads((out / "peers" / f"{peer}.json").read_text())
        assert set(result["scores"]) == {"dev"} and result["task"] == "toy"
    pickled = [p for p in (out / "peers").rglob("*") if p.suffix in (".bin", ".pt", ".pth", ".pkl")]
    assert not pickled, pickled  # peers leave safetensors and JSON, no trainer checkpoints
    logreg = json.loads((out / "peers" / "logreg.json").read_text())
    heads = json.loads((out / "heads" / "config.json").read_text())
    assert logreg["train_rows"] == heads["train_rows"]  # the same carve, the same training part
    assert max(logreg["grid"], key=lambda g: g["score"])["C"] == float(re.search(r"C ([\d.e-]+)", logreg["how"]).group(1))
    page = _Page()
    page.feed((out / "report.html").read_text())
    names = [r[0] for r in page.rows if r]
    assert any(n.startswith("Logistic regression on pretrained sentence embeddings") for n in names), names
    for peer, name in (("lora", "LoRA (peft)"), ("setfit", "SetFit")):
        if peer in peers:
            assert any(n.startswith(name) for n in names), names


@pytest.mark.ray
def test_the_lora_peer_scores_dev_with_the_adapter_it_saved(tiny_run, tiny_bert_dir):
    """Dev is scored after training, from each saved checkpoint. The peer's loader must give the
    saved adapter and head, logit for logit, not the checkpoint wrapped in a second, fresh
    adapter (which scored SST-2 at 60% against 84%)."""
    pytest.importorskip("peft")
    import importlib.util
    import sys

    import torch
    from peft import PeftModel
    from transformers import AutoTokenizer

    from bertvision.config import FinetuneConfig
    from bertvision.sentences.tuning import SentenceTuning
    from bertvision.tasks import get_task

    task, out, _ = tiny_run
    script = Path(__file__).parents[1] / "benchmarks" / "peers.py"
    if not (out / "peers" / "lora.json").exists():
        proc = subprocess.run([sys.executable, str(script), "lora", "--run", str(out), *PEER_ARGS], capture_output=True,
                              text=True, timeout=600)  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-3000:]
    spec = importlib.util.spec_from_file_location("peers", script)
    peers = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(peers)
    toy = get_task(str(task))
    kind = SentenceTuning(toy, FinetuneConfig(task=str(task), encoder=str(tiny_bert_dir), device="cpu"), "cpu")
    load = peers.lora_loader(SentenceTuning.load, 8, {"base": str(tiny_bert_dir)})
    dev = toy.load("dev")
    for folder in sorted((out / "peers" / "lora" / "seed-0").glob("checkpoint-*")):
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
        batch = tokenizer(dev.texts[0][:8], dev.texts[1][:8], padding=True, return_tensors="pt")
        saved = PeftModel.from_pretrained(kind.load(str(tiny_bert_dir)), str(folder)).eval()
        with torch.inference_mode():
            assert torch.allclose(load(kind, str(folder)).eval()(**batch).logits, saved(**batch).logits, atol=1e-5), folder


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def _unlabelled_copy(src: Path, dst: Path) -> Path:
    """A CSV's rows without its label column: what a user hands to predict."""
    import csv

    with open(src, newline="") as f:
        rows = list(csv.DictReader(f))
    with open(dst, "w", newline="") as f:
        writer = csv.DictWriter(f, [k for k in rows[0] if k != "label"])
        writer.writeheader()
        writer.writerows([{k: v for k, v in r.items() if k != "label"} for r in rows])
    return dst


def _predicted(path: Path) -> tuple[list[str], np.ndarray]:
    """(ids, outputs) of a predict output file: class probabilities (N, C), or scores (N, 1)."""
    import pyarrow.csv as pv
    import pyarrow.parquet as pq

    table = pq.read_table(path) if path.suffix == ".parquet" else pv.read_csv(path, convert_options=pv.ConvertOptions(
        column_types={"id": "string"}))  # fmt: skip
    cols = [c for c in table.column_names if c.startswith("prob_")] or ["score"]
    return [str(x) for x in table.column("id").to_pylist()], np.stack([table.column(c).to_numpy() for c in cols], 1)


def _scored(task: Path, split: str, path: Path, dtype=np.float64) -> dict:
    """The task's metrics of a predict output file; ``dtype``: the outputs' as the run scored them (a
    head's float32, an ensemble's float64: a correlation's last digits depend on it)."""
    from bertvision.metrics import compute_metrics
    from bertvision.tasks import get_task

    gold = get_task(str(task)).load(split)
    ids, outputs = _predicted(path)
    assert ids == gold.ids
    assert np.array_equal(outputs.astype(dtype), outputs)  # the file holds the values exactly
    return compute_metrics(gold.task.metrics, outputs.astype(dtype), gold.labels)


@pytest.mark.ray
def test_predict_on_unlabelled_dev_reproduces_the_runs_head_and_ensemble_scores(tiny_run, tmp_path):
    """The run's model on its dev texts with the labels removed: seed 0's head gives the outputs
    the head gave on the stored dev states, bit for bit, and so its reported score; the ensemble
    gives the ensemble's reported score."""
    import torch

    from bertvision.sentences.heads import softmax_rows
    from bertvision.store import load_split
    from bertvision.train import load_head

    task, out, _ = tiny_run
    texts = _unlabelled_copy(task.parent / "dev.csv", tmp_path / "dev.csv")
    _bv("predict", out, "--input", texts, "--model", "head", "--seed", 0, "--out", tmp_path / "head.csv")
    model, _ = load_head(out / "heads" / "seed-0")
    stored = load_split(out / "store" / "cls" / "dev")
    with torch.inference_mode():
        expected = softmax_rows(model(stored.hidden).double().numpy())
    ids, probs = _predicted(tmp_path / "head.csv")
    assert ids == stored.ids and np.array_equal(probs, expected)
    assert _scored(task, "dev", tmp_path / "head.csv") == json.loads((out / "heads" / "seed-0" / "metrics.json").read_text())["dev"]
    _bv("predict", out, "--input", texts, "--out", tmp_path / "ens.parquet")  # the ensemble, by default
    ens = json.loads((out / "ensemble" / "ensemble.json").read_text())
    reported = {k: v for k, v in ens["ensembles"][ens["chosen"]]["dev"].items() if k != "score"}
    assert _scored(task, "dev", tmp_path / "ens.parquet") == reported
    # bad input: one line naming the file, nothing written
    (tmp_path / "bad.jsonl").write_text('{"first": "a b"}\n')
    proc = _bv("predict", out, "--input", tmp_path / "bad.jsonl", "--out", tmp_path / "bad.csv", check=False)
    assert proc.returncode == 1 and proc.stderr.strip() == (
        f"bertvision: error: {tmp_path / 'bad.jsonl'}:1: no field 'second' (the task's text fields are first, second)")
    assert not list(tmp_path.glob("*bad.csv*"))


@pytest.mark.ray
def test_predict_writes_a_glue_leaderboard_file_for_rtes_test_split(tiny_run, tmp_path, shared_data):
    """The GLUE submission format on RTE's real test split: file name, header, one row per test
    example in its order, GLUE's label names. (The run is the toy run's heads over RTE's pair
    fields: only the file's form is checked.)"""
    from bertvision.tasks import get_task

    _, out, _ = tiny_run
    rte = tmp_path / "rte-run"
    shutil.copytree(out, rte)
    pipeline = json.loads((rte / "pipeline.json").read_text())
    pipeline["task"] = get_task("rte").spec.to_dict()
    pipeline["config"].update(task="rte", data_dir=str(shared_data))
    (rte / "pipeline.json").write_text(json.dumps(pipeline))
    _bv("predict", rte, "--split", "test", "--format", "glue", "--out", tmp_path / "glue")
    lines = (tmp_path / "glue" / "RTE.tsv").read_text().splitlines()
    test = get_task("rte", shared_data).load("test")
    assert lines[0] == "index\tprediction" and len(lines) == 1 + len(test) == 3001
    assert [line.split("\t")[0] for line in lines[1:]] == test.ids
    assert {line.split("\t")[1] for line in lines[1:]} <= {"entailment", "not_entailment"}
    proc = _bv("predict", rte, "--split", "dev", "--format", "glue", "--out", tmp_path / "x", check=False)
    assert proc.returncode == 1 and "--format glue writes a GLUE test split's leaderboard file" in proc.stderr


@pytest.mark.ray
def test_a_one_file_regression_task_runs_scored_on_its_carved_test_part(tmp_path, tiny_bert_dir, shared_ray):
    """One labelled file and nothing else: the run carves a test part from it, scores every method
    there, says so in its headline, and predict on those texts gives the heads' reported scores.
    (Before: the report crashed, IndexError in report.headline, with no held-out split.)"""
    toy = write_toy_task(tmp_path / "toy", n_train=160, kind="regression")
    config = toy.read_text().replace('dev = "dev.csv"\n', "")
    (tmp_path / "toy" / "one.toml").write_text(config)
    task, out = tmp_path / "toy" / "one.toml", tmp_path / "run"
    proc = _cli("run", "--task", task, "--encoder", tiny_bert_dir, "--seeds", 0, 1, "--trials", 2, "--initial-points", 1,
                "--head-epochs", 2, "--top-k", 2, "--out", out, env=shared_ray.cli_env)  # fmt: skip
    pipeline = json.loads((out / "pipeline.json").read_text())
    assert pipeline["status"] == "done" and pipeline["task"]["carved_test"]["split"] == "heldout"
    assert (out / "report.html").is_file()
    words = " ".join(proc.stdout.split())
    assert "heldout (the test part carved from train: 10%, seed 0) pearson / spearman: the best head scores" in words
    assert re.search(r"full fine-tuning \(1 epoch\(s\) at lr 0.0001\) -?[\d.]+ ± [\d.]+ / -?[\d.]+", words)  # scored there too
    stored = json.loads((out / "store" / "cls" / "heldout" / "_manifest.json").read_text())
    assert stored["rows"] == 16 and json.loads((out / "store" / "cls" / "train" / "_manifest.json").read_text())["rows"] == 144
    # the carved part's texts through predict: each seed's reported score, exactly
    rows = get_task_rows(task, "heldout")
    (tmp_path / "heldout.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    for seed in (0, 1):
        _bv("predict", out, "--input", tmp_path / "heldout.jsonl", "--model", "head", "--seed", seed,
             "--out", tmp_path / f"h{seed}.csv")  # fmt: skip
        reported = json.loads((out / "heads" / f"seed-{seed}" / "metrics.json").read_text())["heldout"]
        assert _scored(task, "heldout", tmp_path / f"h{seed}.csv", np.float32) == reported
    _bv("predict", out, "--split", "heldout", "--out", tmp_path / "e.csv")
    ens = json.loads((out / "ensemble" / "ensemble.json").read_text())
    assert _scored(task, "heldout", tmp_path / "e.csv") == {
        k: v for k, v in ens["ensembles"][ens["chosen"]]["heldout"].items() if k != "score"}


def get_task_rows(task: Path, split: str) -> list[dict]:
    """A split's rows as predict takes them: id and text fields, no label."""
    from bertvision.tasks import get_task

    data = get_task(str(task)).load(split)
    return [{k: v for k, v in data.example(i).items() if k != "label"} for i in range(len(data))]
