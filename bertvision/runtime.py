"""What every training loop shares (fine-tuning, heads): seeds, devices, the learning-rate
schedule, AdamW's parameter groups, progress bars, and the checks that stop a run going wrong
(bad optimisation settings, a diverging loss, non-finite weights).
"""

from __future__ import annotations

import math
import random

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


def use_progress(factory) -> None:
    """Make `progress` build its bars with ``factory(total=, desc=)`` (None: tqdm again): a Ray
    worker sets Ray's tqdm here, whose bars the driver draws (tqdm stays silent off a terminal)."""
    global _PROGRESS
    _PROGRESS = factory


def progress(total: int, desc: str, initial: int = 0, leave: bool = True):
    """A progress bar: tqdm on a terminal (silent otherwise), or the factory `use_progress` set."""
    if _PROGRESS is None:
        from tqdm.auto import tqdm

        return tqdm(total=total, initial=initial, desc=desc, leave=leave, disable=None)
    bar = _PROGRESS(total=total, desc=desc)
    if initial:
        bar.update(initial)
    return bar
