"""What every training loop shares (fine-tuning, heads): seeds, devices, the learning-rate
schedule, AdamW's parameter groups, progress bars, and the checks that stop a run going wrong
(bad optimisation settings, a diverging loss, non-finite weights).
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import random
import re
import sys
import threading
import time
from pathlib import Path

import numpy as np

from bertvision.errors import ConfigError, RunError


def set_seed(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def quiet_transformers() -> None:
    """Keep transformers' load reports and progress bars out of our output."""
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def pick_device(device: str | None):
    """The torch device named by ``--device`` (None: CUDA when available, else the CPU); a
    ConfigError for a name that is not a device, or CUDA (MPS) on a machine without it."""
    import torch

    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise ConfigError(f"--device {device!r} is not a device name; use cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            why = "this torch build has no CUDA" if torch.version.cuda is None else "no CUDA GPU is visible"
            raise ConfigError(f"--device {device}: CUDA is not available here ({why}); use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) here")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"--device {device}: MPS is not available here; use --device cpu")
    return dev


def linear_schedule(optimizer, warmup_steps: int, total_steps: int):
    import torch

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def adamw(model, lr: float, weight_decay: float):
    """AdamW with weight decay on matrices only (not on biases and LayerNorm weights)."""
    import torch

    params = list(model.parameters())
    groups = [{"params": [p for p in params if p.ndim > 1], "weight_decay": weight_decay},
              {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0}]  # fmt: skip
    return torch.optim.AdamW(groups, lr=lr)


def check_optimisation(cfg) -> None:
    """The checks every training config shares (fine-tuning, heads), on the fields ``cfg`` has:
    a finite positive learning rate, finite non-negative weight decay, warmup in [0, 1), a
    validation part in (0, 1) of train, a finite positive gradient clip, distinct seeds."""
    has = lambda name: getattr(cfg, name, None) is not None  # noqa: E731
    if has("lr") and not (cfg.lr > 0 and math.isfinite(cfg.lr)):
        raise ConfigError(f"--lr must be a finite positive number, not {cfg.lr}")
    if has("weight_decay") and not (cfg.weight_decay >= 0 and math.isfinite(cfg.weight_decay)):
        raise ConfigError(f"--weight-decay must be finite and >= 0, not {cfg.weight_decay}")
    if has("warmup") and not 0 <= cfg.warmup < 1:
        raise ConfigError(f"--warmup must be in [0, 1), not {cfg.warmup}")
    if has("validation_fraction") and not 0 < cfg.validation_fraction < 1:
        raise ConfigError(f"--validation-fraction must be in (0, 1), not {cfg.validation_fraction}")
    if has("max_grad_norm") and not (cfg.max_grad_norm > 0 and math.isfinite(cfg.max_grad_norm)):
        raise ConfigError(f"--max-grad-norm must be a finite positive number, not {cfg.max_grad_norm}")
    if has("seeds"):
        if not cfg.seeds:
            raise ConfigError("--seeds: give at least one seed")
        repeated = sorted({s for s in cfg.seeds if list(cfg.seeds).count(s) > 1})
        if repeated:
            raise ConfigError(f"--seeds: seed {', '.join(map(str, repeated))} given more than once; a "
                              "repeated seed repeats one run and understates the spread")  # fmt: skip


def check_loss(loss, step: int, lr: float, what: str = "training") -> float:
    """The loss as a float, or a RunError when it is NaN or infinite: training diverged (or the
    data holds non-finite values), and every later step and the saved weights would be NaN."""
    value = float(loss.detach())
    if not math.isfinite(value):
        raise RunError(f"{what} diverged: the loss is {value} at step {step} (--lr {lr:g}); nothing was "
                       "saved from this run. Lower --lr, or check the input for NaN/inf values")  # fmt: skip
    return value


def check_finite_state(state: dict, where) -> None:
    """RunError when a model's weights hold NaN or inf (they would be saved as a broken model)."""
    import torch

    bad = [k for k, v in state.items() if torch.is_floating_point(v) and not torch.isfinite(v).all()]
    if bad:
        raise RunError(f"{where}: the weights are not finite ({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''}); "
                       "training diverged and nothing was saved. Lower --lr")  # fmt: skip


def peak_rss_mb() -> float:
    """This process's peak resident memory so far, in MiB (`resource.getrusage`; KiB on Linux)."""
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1024 * 1024 if sys.platform == "darwin" else 1024), 1)


_PROGRESS = None  # a factory set by `use_progress` (Ray's tqdm inside a Ray worker), else tqdm
_CONSOLE = None  # the terminal while a `RunOutput` holds sys.stdout and sys.stderr: `progress` draws there


def use_progress(factory) -> None:
    """Make `progress` build its bars with ``factory(total=, desc=, unit=)`` (None: tqdm again): a Ray
    worker sets Ray's tqdm here, whose bars the driver draws (tqdm stays silent off a terminal)."""
    global _PROGRESS
    _PROGRESS = factory


def progress(total: int, desc: str, initial: int = 0, leave: bool = True, unit: str = "it"):
    """A progress bar with its ETA: tqdm on a terminal (silent otherwise), or the factory
    `use_progress` set. Under a `RunOutput` it draws on the terminal and vanishes when closed
    (the stage's end line follows)."""
    if _PROGRESS is None:
        from tqdm.auto import tqdm

        return tqdm(total=total, initial=initial, desc=desc, leave=leave and _CONSOLE is None, unit=unit,
                    disable=None, file=_CONSOLE)  # fmt: skip
    bar = _PROGRESS(total=total, desc=desc, unit=unit)
    if initial:
        bar.update(initial)
    return bar


def warn(text: str) -> None:
    """``bertvision: warning: <text>`` on stderr, above any bar: the terminal's under a `RunOutput`."""
    from tqdm import tqdm

    tqdm.write(f"bertvision: warning: {text}", file=_CONSOLE or sys.stderr)


def stepped(items: list, desc: str, unit: str):
    """``items``, one by one, with a `progress` bar stepping after each."""
    bar = progress(len(items), desc, unit=unit)
    for item in items:
        yield item
        bar.update(1)
    bar.close()


class RunOutput(contextlib.AbstractContextManager):
    """A run's console: its own lines (`say`) and `progress` bars on the terminal; everything else
    this process prints meanwhile (Ray's tables and logging, its workers' output relayed to the
    driver, warnings, tracebacks of its teardown) into ``folder``/<name>.log, name the stage
    running (`to`) or "run" between stages, and on the terminal too where ``show`` (--verbose).
    A log file is opened at its first line, appended to; writing one never fails the run."""

    def __init__(self, folder: Path, show: bool = False):
        self.folder, self.show, self.name, self.file = folder, show, "run", None
        self._lock, self._partial = threading.RLock(), ""

    def __enter__(self) -> RunOutput:
        global _CONSOLE
        self._saved = sys.stdout, sys.stderr
        sinks = {id(s): _Sink(self, s) for s in self._saved}
        sys.stdout, sys.stderr = sinks[id(sys.stdout)], sinks[id(sys.stderr)]
        # logging's handlers on them (Ray's among them) hold the stream they were made with
        loggers = [logging.getLogger(), *(g for g in logging.Logger.manager.loggerDict.values() if isinstance(g, logging.Logger))]
        self._handlers = [(h, h.setStream(sinks[id(h.stream)])) for g in loggers for h in g.handlers
                          if id(getattr(h, "stream", None)) in sinks]  # fmt: skip
        _CONSOLE = self._saved[1]
        self._stop = threading.Event()
        threading.Thread(target=self._redraw, name="bertvision-bars", daemon=True).start()
        return self

    def _redraw(self) -> None:
        """Every bar redrawn each second: its time and ETA move while a long step runs."""
        from tqdm import tqdm

        while not self._stop.wait(1):
            for bar in list(getattr(tqdm, "_instances", ())):
                bar.refresh()

    def __exit__(self, *exc) -> None:
        global _CONSOLE
        self._stop.set()
        sys.stdout, sys.stderr = self._saved
        for handler, stream in self._handlers:
            handler.setStream(stream)
        _CONSOLE = None
        self.to(None)

    def say(self, line: str) -> None:
        """One line of the run's own, on the terminal."""
        with self._lock:
            self._saved[0].write(line + "\n")
            self._saved[0].flush()

    def to(self, name: str | None) -> Path:
        """Log what follows into ``name``.log (None: run.log); returns its path. A stage's bars end
        with it, a failed one's too."""
        from tqdm import tqdm

        for bar in list(getattr(tqdm, "_instances", ())):
            bar.close()
        with self._lock:
            if self.file is not None:
                with contextlib.suppress(OSError):
                    self.file.close()
            self.name, self.file = name or "run", None
            return self.path

    @property
    def path(self) -> Path:
        return self.folder / f"{self.name}.log"

    def write(self, text: str, stream=None) -> None:
        """``text`` into the log (by whole lines, colour codes and overdrawn bars dropped), and on
        ``stream`` (the terminal) where shown."""
        with self._lock:
            if self.show and stream is not None:
                stream.write(text)
                stream.flush()
            *lines, self._partial = (self._partial + text).split("\n")
            for line in lines:
                plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", line).rsplit("\r", 1)[-1]
                if plain.strip() or "\r" not in line:  # not a bar's line wiped
                    self._log(plain)

    def _log(self, line: str) -> None:
        with contextlib.suppress(OSError):  # a full disk: the run's own error is the one to tell
            if self.file is None:
                self.folder.mkdir(parents=True, exist_ok=True)
                self.file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (closed by `to`)
                self.file.write(f"--- {self.name}, {time.strftime('%Y-%m-%d %H:%M:%S')} ---\n")
            self.file.write(line + "\n")
            self.file.flush()


class _Sink(io.TextIOBase):
    """sys.stdout or sys.stderr while a `RunOutput` holds them: written into its log."""

    def __init__(self, output: RunOutput, stream):
        self.output, self.stream = output, stream

    def write(self, text: str) -> int:
        self.output.write(text, self.stream)
        return len(text)

    def isatty(self) -> bool:  # tqdm and Ray Data draw their bars only where shown on a terminal
        return self.output.show and self.stream.isatty()

    def fileno(self) -> int:
        return self.stream.fileno()

    @property
    def encoding(self) -> str:
        return getattr(self.stream, "encoding", "utf-8")
