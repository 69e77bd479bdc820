"""What every config shares: the task families, choices and positive checks, the family
defaults (`KindDefaults`), configs from JSON (`from_dict`), field docstrings and `derive`."""

from __future__ import annotations

import ast
import inspect
import textwrap
import types
import typing
from dataclasses import dataclass, fields, is_dataclass, replace
from functools import cache
from typing import Any, ClassVar, Literal

from bertvision.errors import ConfigError


@dataclass(frozen=True)
class Family:
    """What a task family changes beyond ``kind_defaults``: asked, not branched on by name."""

    name: str
    """sentence or span."""
    selections: tuple[str, ...] | None = None
    """The stores a run makes (None: its --selections)."""
    subsets: bool = True
    """Fine-tuning and heads can train on a subset (--train-examples, --fractions)."""
    own_validation: bool = False
    """A task's own validation split selects (SQuAD's article split), so a run stores it."""
    ensemble_store: bool = False
    """Ensembles read the run's store (sentence trials carry their own stores)."""
    metrics: tuple[str, ...] | None = None
    """The metrics a report shows (None: the task's)."""
    percent: bool = True
    """Scores are fractions, shown as percent (SQuAD's are percent already)."""


FAMILIES = {"sentence": Family("sentence"),
            "span": Family("span", ("tokens",), subsets=False, own_validation=True, ensemble_store=True,
                           metrics=("exact", "f1"), percent=False)}  # fmt: skip
"""Task families whose defaults differ: sentence (classification, regression) and span tasks."""
FAMILY = {"classification": "sentence", "regression": "sentence", "span": "span"}
"""Task kind (a task spec's ``kind``) -> its family."""


def family(kind: str) -> Family:
    """The family of a task kind (or family name)."""
    return FAMILIES[FAMILY.get(kind, kind)]


def check_choices(cfg) -> None:
    """ConfigError for a field typed ``Literal[...]`` (or a tuple of them) holding another value."""
    for name, hint in hints(type(cfg)).items():
        base, _ = unwrap(hint)
        value = getattr(cfg, name)
        if typing.get_origin(base) is tuple:
            base, values = typing.get_args(base)[0], value or ()
        else:
            values = () if value is None else (value,)
        if typing.get_origin(base) is Literal:
            choices = typing.get_args(base)
            bad = [v for v in values if v not in choices]
            if bad:
                raise ConfigError(f"--{name.replace('_', '-')} must be one of {', '.join(choices)}, not {bad[0]!r}")


@cache
def hints(cls) -> dict:
    return typing.get_type_hints(cls)


def unwrap(hint):
    """(type, optional) of ``X | None``."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return [a for a in typing.get_args(hint) if a is not type(None)][0], True
    return hint, False


def dataclass_of(hint):
    base, _ = unwrap(hint)
    return base if isinstance(base, type) and is_dataclass(base) else None


def positive(cfg, names: tuple[str, ...]) -> None:
    for name in names:
        value = getattr(cfg, name)
        if value is not None and value <= 0:
            raise ConfigError(f"--{name.replace('_', '-')} must be positive")


class KindDefaults:
    """A config whose fields left as None take their task family's value (``kind_defaults``)."""

    kind_defaults: ClassVar[dict[str, dict[str, Any]]] = {}

    def resolved(self, family: str):
        """This config with every unset field the family (or a kind of it) decides filled in."""
        family = FAMILY.get(family, family)
        if family not in FAMILIES:
            raise ConfigError(f"task family must be one of {tuple(FAMILIES)}, not {family!r}")
        changes = {name: by[family] for name, by in self.kind_defaults.items() if getattr(self, name) is None}
        nested = {f.name: v.resolved(family) for f in fields(self) if isinstance(v := getattr(self, f.name), KindDefaults)}
        return replace(self, **changes, **nested)


def derive(cls, source, **given):
    """A ``cls`` of the fields of ``source`` that it has too, ``given`` overriding them: a stage's
    config composed from a run's, so a field added to both reaches the stage without code."""
    names = {f.name for f in fields(source)} & {f.name for f in fields(cls) if f.init}
    return cls(**{n: getattr(source, n) for n in sorted(names - set(given))}, **given)


def from_dict(cls, data: dict):
    """A config from config.json's dict: nested configs and tuples restored, unknown keys refused."""
    if not isinstance(data, dict):
        raise ConfigError(f"{cls.__name__}: expected a mapping, got {type(data).__name__}")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{cls.__name__}: unknown keys {unknown}; known: {sorted(known)}")
    values = {}
    for name, value in data.items():
        inner = dataclass_of(hints(cls)[name])
        if inner is not None and isinstance(value, dict):
            value = from_dict(inner, value)
        elif isinstance(value, list):
            value = tuple(value)
        values[name] = value
    return cls(**values)


@cache
def field_docs(cls) -> dict[str, str]:
    """Field name -> the docstring under it in the class body (one line of text)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not is_dataclass(klass):
            continue
        body = ast.parse(textwrap.dedent(inspect.getsource(klass))).body[0].body
        for node, nxt in zip(body, body[1:], strict=False):
            if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                    and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant)
                    and isinstance(nxt.value.value, str)):  # fmt: skip
                docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs
