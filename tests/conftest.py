"""Shared fixtures. Tests never touch the network: the Hugging Face Hub is put in offline
mode before anything imports huggingface_hub (it reads the variables once, at import)."""

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]


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
