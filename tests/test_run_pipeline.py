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


def _fake_run(folder: Path, head: float, majority: float, full: float) -> Path:
    """The files `headline` reads, for one classification task with accuracy only."""
    spec = {"name": "fake", "title": "Fake", "kind": "classification", "metrics": ["accuracy"],
            "eval_splits": ["dev"], "labels": ["a", "b"]}  # fmt: skip
    cfg = PipelineConfig(task="fake", seeds=(0, 1, 2))
    from dataclasses import asdict

    (folder / "stages").mkdir(parents=True)
    (folder / "heads").mkdir()
    (folder / "finetune").mkdir()
    (folder / "pipeline.json").write_text(json.dumps({"config": asdict(cfg), "task": spec}))
    (folder / "stages" / "majority.json").write_text(json.dumps(
        {"done": True, "result": {"rule": "always 'a'", "scores": {"dev": {"accuracy": majority}}}}))  # fmt: skip
    stats = lambda v: {"accuracy": {"mean": v, "std": 0.01}}  # noqa: E731
    (folder / "heads" / "summary.json").write_text(json.dumps({"seeds": [0, 1, 2], "dev": stats(head), "runs": [],
                                                                "train_seconds": 1.0}))  # fmt: skip
    (folder / "finetune" / "baseline.json").write_text(json.dumps(
        {"chosen": {"lr": 1e-4, "epochs": 1.0, "validation_score": None}, "seeds": [0, 1, 2], "dev": stats(full),
         "train_seconds": 3.0, "by_epoch": {}}))  # fmt: skip
    return folder


def test_the_headline_says_plainly_when_the_head_is_no_better_than_the_majority_class(tmp_path):
    from bertvision.report import headline

    text = headline(_fake_run(tmp_path / "low", head=0.52, majority=0.527, full=0.55))
    assert "NO BETTER than the majority class" in text and "52.0 ± 1.0" in text and "52.7" in text
    text = headline(_fake_run(tmp_path / "high", head=0.85, majority=0.50, full=0.86))
    assert "NO BETTER" not in text and "within the spread of full fine-tuning (-1.0 points" in text
    text = headline(_fake_run(tmp_path / "above", head=0.90, majority=0.50, full=0.80))
    assert "above full fine-tuning (+10.0 points" in text


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
