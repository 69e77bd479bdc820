"""The command line from the configs: an option per field, named after it, its docstring its help."""

from __future__ import annotations

import argparse
import dataclasses
import typing
from dataclasses import fields
from typing import Any, Literal

from bertvision.config.fields import dataclass_of, field_docs, hints, unwrap


def add_arguments(parser, cls, *, only: tuple[str, ...] | None = None, skip: tuple[str, ...] = (),
                  required: bool = True, flags: dict[str, str] | None = None, unset: bool = False) -> None:  # fmt: skip
    """One option per field of ``cls`` (nested configs flattened; ``flags`` renames); ``unset``:
    options left out stay out of the namespace, so the caller can tell which were given."""
    flags = flags or {}
    for path, f, owner in _leaves(cls):
        name = path[-1]
        if name in skip or (only is not None and name not in only):
            continue
        kw: dict[str, Any] = {"dest": "__".join(path), "help": _help(owner, f)}
        base, _ = unwrap(hints(owner)[name])
        if base is bool:
            kw["action"] = argparse.BooleanOptionalAction
        elif typing.get_origin(base) is tuple:
            kw["nargs"] = "*" if f.default == () else "+"
            kw.update(_scalar(typing.get_args(base)[0], name.removesuffix("s")))
        else:
            kw.update(_scalar(base, name))
        if f.default is dataclasses.MISSING and required:
            kw["required"] = True
        else:
            kw["default"] = argparse.SUPPRESS if unset else None if f.default is dataclasses.MISSING else f.default
        # as given: Python 3.10's BooleanOptionalAction appends its own "(default: True)"
        parser.add_argument(flags.get(name, "--" + name.replace("_", "-")), **kw).help = kw["help"]


def from_arguments(cls, args: argparse.Namespace, **given):
    """The config ``cls`` from options made by `add_arguments` (``given`` overrides)."""
    return _build(cls, vars(args), (), given)


def _build(cls, values: dict, prefix: tuple[str, ...], given: dict):
    kwargs = {}
    for f in fields(cls):
        path = (*prefix, f.name)
        inner = dataclass_of(hints(cls)[f.name])
        if not prefix and f.name in given:
            kwargs[f.name] = given[f.name]
        elif inner is not None:
            kwargs[f.name] = _build(inner, values, path, {})
        elif "__".join(path) in values:
            value = values["__".join(path)]
            kwargs[f.name] = tuple(value) if isinstance(value, list) else value
    return cls(**kwargs)


def _leaves(cls, prefix: tuple[str, ...] = ()):
    for f in fields(cls):
        inner = dataclass_of(hints(cls)[f.name])
        if inner is not None:
            yield from _leaves(inner, (*prefix, f.name))
        else:
            yield (*prefix, f.name), f, cls


def _scalar(tp, name: str) -> dict:
    """type (or choices, shown as {a,b}) and metavar of one value of type ``tp``: N for a
    count, X for a number, else the field name's last word (DIR, DEVICE, SPLIT...)."""
    if typing.get_origin(tp) is Literal:
        return {"choices": list(typing.get_args(tp))}
    metavar = {int: "N", float: "X"}.get(tp, name.split("_")[-1].upper())
    return {"type": {float: _float, int: int}.get(tp, str), "metavar": metavar}


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None


def _help(owner, f) -> str:
    text = field_docs(owner).get(f.name, "")
    by = getattr(owner, "kind_defaults", {}).get(f.name)
    if by:
        default = ", ".join(f"{v} for {k} tasks" for k, v in by.items())
    elif f.default is dataclasses.MISSING or f.default is None:
        return text.replace("%", "%%")
    elif isinstance(f.default, bool):
        default = "on" if f.default else "off"
    elif isinstance(f.default, tuple):
        default = " ".join(map(str, f.default)) or "none"
    else:
        default = str(f.default)
    text = text[:-1] if text.endswith(".") else text
    return f"{text} (default: {default})".replace("%", "%%")
