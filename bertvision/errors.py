"""Errors a user can act on. The command line prints them in one line and exits with the
error's ``exit_code``:

    0   success
    1   your input is wrong: a data file, a store, a head or an option (DataError, ConfigError)
    2   the command line itself is malformed (argparse's usage errors)
    3   something failed while running: disk full, permissions, a folder held by another
        process, training diverged (RunError, and OS errors the stages translate to it)
    130 interrupted (Ctrl-C)
"""

from __future__ import annotations

from os import PathLike

EXIT_INPUT, EXIT_USAGE, EXIT_RUN, EXIT_INTERRUPTED = 1, 2, 3, 130


class BertVisionError(Exception):
    """Base class: a problem a user can act on, not a bug in BERTVision."""

    exit_code = EXIT_INPUT


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

    def __reduce__(self):
        # Picklable with its fields (Ray sends a worker's errors to the driver this way).
        return (_data_error, (self.source, self.problem, self.line, self.key))


def _data_error(source: str, problem: str, line: int | None, key: str | None) -> DataError:
    return DataError(source, problem, line=line, key=key)


class ConfigError(BertVisionError, ValueError):
    """A bad option or configuration value; the message names the option or field."""


class RunError(BertVisionError, RuntimeError):
    """Something failed while running, with the input in order: the disk filled up, a path
    could not be written, another process holds the output folder, training diverged. The
    message names the path or the option; nothing half-written is left under a final name."""

    exit_code = EXIT_RUN


def os_error(exc: OSError, doing: str) -> RunError:
    """A RunError naming the path of an OSError and what was being done, e.g.
    ``runs/x/shard-00003.parquet: no space left on device while writing the store``."""
    import os

    path = exc.filename or "?"
    reason = exc.strerror or (os.strerror(exc.errno) if exc.errno else str(exc))
    return RunError(f"{path}: {reason.lower() if reason else exc} while {doing}")


def json_error(
    source: str | PathLike,
    exc,
    *,
    line: int | None = None,
    what: str = "not valid JSON",
) -> DataError:
    """A DataError for a `json.JSONDecodeError`, saying where in `source` decoding stopped.

    ``exc.pos`` is a character offset into the decoded text ``exc.doc``. For a file of several
    lines the error names the line (lines end at ``\\n``, as `json` counts them, so ``\\r\\n``
    and ``\\r\\r\\n`` end one line) and the column; for a one-line file, the offset alone
    (unless decoding stopped past that line's ``\\n``: then line 2, column 1). For one
    line of a JSON-lines file, pass its line in the file as `line`: the column and offset are
    then within that line. A note says so when the text ends where decoding stopped, as it does
    in a truncated file, e.g. ``dev-v2.0.json: not valid JSON: Unterminated string starting at
    character offset 18230; the string is still open where the file ends, at character offset
    18301 (truncated?)``.
    """
    doc, pos, msg = exc.doc, exc.pos, exc.msg
    if msg.endswith(" at"):  # "Unterminated string starting at", "Invalid control character at"
        msg = msg[: -len(" at")]
    unit = "file"
    if line is not None:
        unit = "line"
        column = pos - (doc.rfind("\n", 0, pos) + 1) + 1
        place = f"column {column} (character offset {pos} in the line)"
    elif "\n" in doc.rstrip() or doc.find("\n", 0, pos) >= 0:  # several lines, or past the one
        line = doc.count("\n", 0, pos) + 1
        column = pos - (doc.rfind("\n", 0, pos) + 1) + 1
        place = f"column {column} (character offset {pos})"
    else:
        place = f"character offset {pos}"
    problem = f"{what}: {msg} at {place}"
    if not doc.strip():
        problem = f"{what}: the {unit} is empty"
    elif not doc[pos:].strip():
        problem += f"; the {unit} ends there (truncated?)"
    elif msg.startswith("Unterminated string"):
        end = len(doc.rstrip())
        problem += f"; the string is still open where the {unit} ends, at character offset {end} (truncated?)"
    return DataError(source, problem, line=line)


def decode_error(
    source: str | PathLike, exc: UnicodeDecodeError, data: bytes | None = None
) -> DataError:
    """A DataError naming the line, and the byte offset, of the first byte of `source` that is
    not UTF-8, e.g. ``train.tsv:3: not UTF-8 text (invalid continuation byte): byte 0xe9 at
    byte offset 62 (offset 5 in the line); save the file as UTF-8``.

    A reader that decodes as it goes fails on a block it has read ahead, not on the line it is
    at, so the bytes (`data`, else read again from `source`) are decoded once more here to find
    the place. Lines end at ``\\n``.
    """
    if data is None:
        try:
            with open(source, "rb") as f:
                data = f.read()
        except OSError:
            data = b""
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as e:
        exc = e
    else:  # unreadable now, or changed since: say what is known
        return DataError(source, f"not UTF-8 text ({exc.reason})")
    start = exc.start
    line = data.count(b"\n", 0, start) + 1
    in_line = start - (data.rfind(b"\n", 0, start) + 1)
    return DataError(
        source,
        f"not UTF-8 text ({exc.reason}): byte 0x{data[start]:02x} at byte offset {start} "
        f"(offset {in_line} in the line); save the file as UTF-8",
        line=line,
    )
