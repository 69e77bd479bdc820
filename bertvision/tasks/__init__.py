"""The task registry: the nine GLUE tasks, SQuAD 2.0 (and its article split), users' tasks.

    task = get_task("rte", data_dir="../shared/data")   # or a user task's config file
    train = task.load("train")                          # a SentenceSplit (SquadSplit for spans)

Where data comes from: the ``data_dir`` argument (``--data-dir``), else ``$BERTVISION_DATA``,
else the Hugging Face Hub through ``datasets``.
"""

from __future__ import annotations

import os
from pathlib import Path

from bertvision.errors import ConfigError
from bertvision.tasks.base import DATA_ENV, SentenceSplit, Task, TaskSpec, resolve_data_dir
from bertvision.tasks.custom import UserTask, is_task_config
from bertvision.tasks.glue import GLUE, GlueTask
from bertvision.tasks.squad import SQUAD2, SQUAD2_ARTICLES, SquadSplit, SquadTask

__all__ = [
    "DATA_ENV", "SentenceSplit", "SquadSplit", "Task", "TaskSpec", "UserTask",
    "get_task", "resolve_data_dir", "task_names",
]  # fmt: skip

# Registry name -> builder(data_dir). Every name in here is listed by `bertvision tasks`.
_BUILDERS = {name: (lambda d, name=name: GlueTask(name, d)) for name in GLUE}
_BUILDERS[SQUAD2.name] = lambda d: SquadTask(SQUAD2, d)
_BUILDERS[SQUAD2_ARTICLES.name] = lambda d: SquadTask(SQUAD2_ARTICLES, d, split_file="dev")

# Spellings people use for the same task.
_ALIASES = {"sst-2": "sst2", "sts-b": "stsb", **dict.fromkeys(("squad_v2", "squadv2", "squad-v2"), "squad2")}


def task_names() -> list[str]:
    """Every registered task name, GLUE first, in the conventional order."""
    return list(_BUILDERS)


def get_task(name: str, data_dir: str | os.PathLike | None = None) -> Task:
    """The task called ``name`` (case-insensitive, ``SST-2`` or ``sst2``), or declared in the
    ``.toml`` / ``.json`` config file at path ``name``; ``data_dir`` as `resolve_data_dir`."""
    key = _ALIASES.get(name.lower(), name.lower())
    if key in _BUILDERS:
        return _BUILDERS[key](resolve_data_dir(data_dir))
    if is_task_config(name) or Path(name).is_file():
        return UserTask(name)
    raise ConfigError(
        f"unknown task {name!r}; known tasks: {', '.join(_BUILDERS)}, or a task config file path"
    )
