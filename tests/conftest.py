"""Shared fixtures. Tests never touch the network: the Hugging Face Hub is put in offline
mode before anything imports huggingface_hub (it reads the variables once, at import)."""

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Ray Train's controller collects the workers' reports at this pace (default 2 s; a worker's
# second report waits for the first to be collected): the tests' epochs last a fraction of a
# second, so at the default most of a Ray Train test is waiting. Inherited by every Ray the
# tests start (in-process, `ray start`, CLI subprocesses).
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
# Under pytest-xdist, each worker's torch (and the CLI runs and local Rays it starts) gets its
# share of the cores, not all of them: two workers of two threads each on two cores stall each
# other's threads. Set before anything imports torch.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    share = (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, share)))

REPO = Path(__file__).resolve().parents[1]


def own_ray_env() -> dict:
    """The environment of a command that must start a local Ray of its own (no $RAY_ADDRESS)."""
    return {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}


@pytest.fixture(scope="session")
def shared_ray(tmp_path_factory):
    """One real head (`ray start --head`: dashboard on 127.0.0.1, token authentication) for the
    command-line runs of this test process that need a Ray but not one of their own: a local Ray
    costs a CPU-bound start (about 10 s of a core here) that attaching does not. (In-process Rays
    stay local: Ray reads its auth mode once per process.) Stopped, by what it started, at the
    end of the session (under xdist: of the worker)."""
    pytest.importorskip("ray")
    from tests import ray_cluster as rc

    root = tmp_path_factory.mktemp("shared-ray")
    node = rc.start_head(rc.short_dir(root, "h"), rc.write_token(root / "token"), num_cpus=4)
    node.cli_env = {**node.env, "RAY_ADDRESS": node.gcs}  # a CLI run attached to it
    yield node
    node.stop()


def shared_data_dir() -> Path | None:
    """The real data: $BERTVISION_DATA, else ../shared/data beside the repository."""
    env = os.environ.get("BERTVISION_DATA")
    path = Path(env) if env else REPO.parent / "shared" / "data"
    return path if (path / "glue").is_dir() else None


@pytest.fixture(scope="session")
def shared_data() -> Path:
    path = shared_data_dir()
    if path is None:
        pytest.skip(
            "real GLUE/SQuAD data not found (set BERTVISION_DATA or put ../shared/data beside the repo)"
        )
    return path


@pytest.fixture
def no_data_env(monkeypatch):
    """No BERTVISION_DATA: tasks fall back to the (offline) Hub."""
    monkeypatch.delenv("BERTVISION_DATA", raising=False)


def bertvision_cli() -> list[str]:
    """The installed console script, so tests run the entry point users run."""
    script = Path(sys.executable).parent / "bertvision"
    return [str(script)] if script.exists() else [sys.executable, "-m", "bertvision"]


@pytest.fixture(scope="session")
def bundled_tokenizer():
    from bertvision.encoders import load_tokenizer

    return load_tokenizer()


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory, bundled_tokenizer) -> Path:
    """A randomly initialised 2-layer BERT (hidden 32), saved as safetensors, plus the
    bundled tokenizer, in one folder: 3 hidden states of width 32."""
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny-bert")
    config = BertConfig(
        vocab_size=len(bundled_tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=37,
        max_position_embeddings=128,
    )
    BertModel(config).save_pretrained(folder, safe_serialization=True)
    bundled_tokenizer.save_pretrained(folder)
    assert (folder / "model.safetensors").is_file()
    return folder


WORDS = ["river", "stone", "cloud", "paper", "green", "quiet", "table", "light", "north", "glass"]


def write_toy_task(folder: Path, n_train: int = 80, n_dev: int = 24, kind: str = "classification") -> Path:
    """A small user task: pairs of sentences whose label says whether they share their first word
    (regression: the number of shared words). Returns the task config path."""
    import random

    rng = random.Random(0)
    folder.mkdir(parents=True, exist_ok=True)

    def rows(n):
        out = []
        for i in range(n):
            a = rng.sample(WORDS, 4)
            b = rng.sample(WORDS, 4)
            if i % 2:
                b[0] = a[0]
            label = int(a[0] == b[0]) if kind == "classification" else float(len(set(a) & set(b)))
            out.append(f"{i},{' '.join(a)},{' '.join(b)},{label}")
        return "id,first,second,label\n" + "\n".join(out) + "\n"

    (folder / "train.csv").write_text(rows(n_train))
    (folder / "dev.csv").write_text(rows(n_dev))
    cfg = folder / "toy.toml"
    labels = 'labels = ["0", "1"]\n' if kind == "classification" else ""
    cfg.write_text(
        f'name = "toy"\nkind = "{kind}"\ntext_fields = ["first", "second"]\nlabel_field = "label"\n'
        f'id_field = "id"\n{labels}[splits]\ntrain = "train.csv"\ndev = "dev.csv"\n'
    )
    return cfg


@pytest.fixture
def toy_task(tmp_path) -> Path:
    return write_toy_task(tmp_path / "toy")


# The longest files, longest first (`pytest --durations=60`, 2026-12-07: each takes 2.5 to 4
# minutes of the suite's 8 to 10 on two cores; most of it starting processes: Ray, torch).
LONGEST_FIRST = ("test_tune.py", "test_ray_embed.py", "test_ray_train.py", "test_hardening.py")


def pytest_collection_modifyitems(config, items):
    """The longest files first, then the other files with Ray tests, then the rest (a stable
    sort; the order within a file kept). `make test` passes ``--no-loadscope-reorder``, so xdist
    hands out files in this order (by default it starts with the files of the most tests): the
    long files then run beside the many short ones instead of one xdist worker finishing alone."""
    ray_files = {item.path for item in items if item.get_closest_marker("ray")}

    def rank(item) -> int:
        if item.path.name in LONGEST_FIRST:
            return LONGEST_FIRST.index(item.path.name)
        return len(LONGEST_FIRST) + (item.path not in ray_files)

    items.sort(key=rank)
