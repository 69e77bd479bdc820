"""Errors a user can fix. The command line prints them in one line and exits with status 1."""

from __future__ import annotations

from os import PathLike


class BertVisionError(Exception):
    """Base class: a problem with the user's input or set-up, not a bug in BERTVision."""


class DataError(BertVisionError, ValueError):
    """Bad input data. The message names the file, and the line or id where one applies.

    Args:
      source: the file (or folder, or Hub dataset) at fault.
      problem: what is wrong, in words a user can act on.
      line: 1-based line number in `source`, where the problem sits on one line.
      key: an example id (a SQuAD question id, a JSONL row id), where that is more useful.
    """

    def __init__(
        self,
        source: str | PathLike,
        problem: str,
        *,
        line: int | None = None,
        key: str | None = None,
    ):
        self.source, self.problem, self.line, self.key = str(source), problem, line, key
        where = self.source
        if line is not None:
            where += f":{line}"
        if key is not None:
            where += f" [{key}]"
        super().__init__(f"{where}: {problem}")


class ConfigError(BertVisionError, ValueError):
    """A bad option or configuration value; the message names the option or field."""
