"""Errors a user can act on. The command line prints them in one line and exits with the error's
``exit_code``: 1 bad input (DataError, ConfigError), 2 a malformed command line (argparse), 3 a
failure while running (RunError: disk full, permissions, a busy folder, a diverged run), 130 Ctrl-C.
"""

from __future__ import annotations

from os import PathLike

EXIT_INPUT, EXIT_USAGE, EXIT_RUN, EXIT_INTERRUPTED = 1, 2, 3, 130


class BertVisionError(Exception):
    """Base class: a problem a user can act on, not a bug in BERTVision."""

    exit_code = EXIT_INPUT


class DataError(BertVisionError, ValueError):
    """Bad input data: ``source`` (a file, folder or Hub dataset), its 1-based ``line`` or an
    example id (``key``) where one applies, and the ``problem`` in words a user can act on."""

    def __init__(self, source: str | PathLike, problem: str, *, line: int | None = None, key: str | None = None):
        self.source, self.problem, self.line, self.key = str(source), problem, line, key
        where = self.source + ("" if line is None else f":{line}") + ("" if key is None else f" [{key}]")
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


def os_error(exc: OSError, doing: str, where: str | PathLike | None = None) -> RunError:
    """A RunError naming the path of an OSError (else ``where``, the folder being written: pyarrow's
    and TensorBoard's writers name no file) and what was being done, e.g.
    ``runs/x/shard-00003.parquet: no space left on device while writing the store``."""
    import os

    path = exc.filename or where or "?"
    reason = exc.strerror or (os.strerror(exc.errno) if exc.errno else str(exc))
    return RunError(f"{path}: {reason.lower() if reason else exc} while {doing}")


def json_error(source: str | PathLike, exc, *, line: int | None = None, what: str = "not valid JSON") -> DataError:
    """A DataError for a `json.JSONDecodeError`: the line (lines end at ``\\n``) and column where
    decoding stopped, or the character offset alone in a one-line file; ``line``: one line of a
    JSON-lines file (column and offset within it). It notes a text that ends there (truncated?)."""
    doc, pos = exc.doc, exc.pos
    msg = exc.msg.removesuffix(" at")  # "Unterminated string starting at", "Invalid control character at"
    unit = "file" if line is None else "line"
    column = pos - (doc.rfind("\n", 0, pos) + 1) + 1
    if line is not None:
        place = f"column {column} (character offset {pos} in the line)"
    elif "\n" in doc.rstrip() or doc.find("\n", 0, pos) >= 0:  # several lines, or past the one
        line = doc.count("\n", 0, pos) + 1
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


def decode_error(source: str | PathLike, exc: UnicodeDecodeError, data: bytes | None = None) -> DataError:
    """A DataError naming the line and byte offset of the first byte of `source` that is not
    UTF-8. A reader decoding as it goes fails on a block read ahead, not its line, so the bytes
    (`data`, else read again from `source`) are decoded once more here to find the place."""
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
    return DataError(source, f"not UTF-8 text ({exc.reason}): byte 0x{data[start]:02x} at byte offset {start} "
                             f"(offset {in_line} in the line); save the file as UTF-8", line=line)  # fmt: skip
