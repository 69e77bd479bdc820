"""Storage layouts: a shard's columns, a batch checked and turned into an Arrow table, and a
table checked and read back into arrays. The manifest says which layout a store has
(`layout_of`); a new layout is one `Layout` in `LAYOUTS`, and nothing else branches on it.

    layout     one row is            columns, in order ([shape] per row, list<...> per token)
    vectors    an example (cls/mean) id, hidden [L, H], label, encoder_logits [C]
    windows    a span task's window  id, example_id, hidden list<[L, H]>, offsets list<[2]>,
                                     label [2] (start, end), encoder_logits list<[2]>
    sentences  an example (tokens)   id, hidden list<[L, H]>, segments list<int8>, label,
                                     encoder_logits [C]

``label`` exists in labelled splits only, ``encoder_logits`` where the manifest says so. A token
store keeps each row's T real tokens (1 <= T <= max_length), never padding.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from bertvision.errors import ConfigError, DataError
from bertvision.store.spec import LABEL_KINDS, suggest_shard_rows, suggest_window_rows

TENSOR_EXTENSION = "arrow.fixed_shape_tensor"
INT32_MAX = 2**31 - 1


# --------------------------------------------------------------------------- value rules
# Each takes a column's (flat) values and each row's token count, and returns a mask of the
# bad values and the problem with one of them.


def _offsets_rule(v: np.ndarray, lengths: np.ndarray):
    ok = (v == -1).all(axis=1) | ((v[:, 0] >= 0) & (v[:, 0] <= v[:, 1]))
    return ~ok, lambda i: f"offsets must be (-1, -1) or 0 <= start <= end, got {tuple(int(x) for x in v[i])}"


def _segments_rule(v: np.ndarray, lengths: np.ndarray):
    return (v < 0) | (v > 1), lambda i: f"segments must be 0 or 1, got {v[i]}"


def _span_rule(v: np.ndarray, lengths: np.ndarray):
    bad = (v[:, 0] < 0) | (v[:, 0] > v[:, 1]) | (v[:, 1] >= lengths)
    return bad, lambda i: (f"label (start, end) = {tuple(int(x) for x in v[i])} outside "
                           f"0 <= start <= end < T = {lengths[i]}")  # fmt: skip


# --------------------------------------------------------------------------- columns


@dataclass(frozen=True)
class Column:
    """One column of a shard: the numpy dtype and shape of one value, stored per row or per
    token (a list column), and what writing accepts and checks."""

    name: str
    arg: str
    """`StoreWriter.write_shard`'s keyword for it."""
    dtype: Any = None  # None: strings
    shape: tuple[int, ...] = ()
    dims: str = ""
    """The shape in words for messages ("L, H")."""
    per_token: bool = False
    accepts: str = "int"
    """Input dtypes written: "float" (converted), "int" or "number"."""
    finite: bool = False
    rule: Callable | None = None
    switch: str | None = None
    """The manifest field that adds the column (label_kind, encoder_logits); None: always there."""
    sizes: str = ""
    """The manifest fields that set the shape, for messages ("num_hidden_states, hidden_size")."""

    @property
    def tensor(self) -> bool:
        return len(self.shape) == 2

    def value_type(self) -> pa.DataType:
        if self.dtype is None:
            return pa.string()
        base = pa.from_numpy_dtype(self.dtype)
        if self.tensor:
            return pa.fixed_shape_tensor(base, list(self.shape))
        return pa.list_(base, self.shape[0]) if self.shape else base

    def arrow_type(self) -> pa.DataType:
        return pa.list_(self.value_type()) if self.per_token else self.value_type()

    def fits(self, t: pa.DataType) -> bool:
        """Whether a shard's column type `t` holds this column (list offsets of either width)."""
        if self.per_token:
            if not (pa.types.is_list(t) or pa.types.is_large_list(t)):
                return False
            t = t.value_type
        if self.tensor:
            return (getattr(t, "extension_name", None) == TENSOR_EXTENSION and list(t.shape) == list(self.shape)
                    and t.permutation in (None, [0, 1]) and t.value_type == pa.from_numpy_dtype(self.dtype))  # fmt: skip
        if self.shape:
            return pa.types.is_fixed_size_list(t) and t.list_size == self.shape[0] and t.value_type == self.value_type().value_type
        return t == self.value_type()

    def shape_in(self, t: pa.DataType) -> tuple[int, ...] | None:
        """The shape of one value of a shard's column type `t` where it holds this column's kind
        of value (a tensor, a fixed-size list), else None."""
        if self.per_token:
            if not (pa.types.is_list(t) or pa.types.is_large_list(t)):
                return None
            t = t.value_type
        if self.tensor and getattr(t, "extension_name", None) == TENSOR_EXTENSION:
            return tuple(t.shape)
        return (t.list_size,) if len(self.shape) == 1 and pa.types.is_fixed_size_list(t) else None

    def to_arrow(self, values, lists: Callable) -> pa.Array:
        """The (flat) values as this column's Arrow array; `lists` cuts them into rows."""
        if self.tensor:
            array = pa.FixedShapeTensorArray.from_numpy_ndarray(values)
        elif self.shape:
            array = pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1), type=self.value_type().value_type),
                                                      self.shape[0])  # fmt: skip
        else:
            array = pa.array(values, type=self.value_type())
        return lists(array) if self.per_token else array

    def from_arrow(self, array: pa.Array):
        """The (flattened) Arrow values as numpy, one row (or token) a value."""
        if self.dtype is None:
            return array.to_pylist()
        if self.tensor:
            return array.to_numpy_ndarray()
        if self.shape:
            return array.flatten().to_numpy().reshape(-1, *self.shape)
        return array.to_numpy()

    def gather(self, value: Any, ids: list[str], lengths: np.ndarray | None, where: str, unit: str,
               place: Path, max_length: int):  # fmt: skip
        """A batch's input for this column, checked and converted: strings as a list, values
        as one array (per token: every row's tokens in order). Returns it (hidden per token:
        with each row's T)."""
        n = len(ids)
        if self.dtype is None:
            value = list(value)
            if len(value) != n:
                raise ValueError(f"{where}: expected {n} {self.arg} (one per {unit}), got {len(value)}")
            bad = next((k for k, x in enumerate(value) if not isinstance(x, str)), None)
            if bad is not None:
                raise ValueError(f"{where}, {unit} {ids[bad]!r}: {self.name} must be a string, got "
                                 f"{type(value[bad]).__name__}")  # fmt: skip
            return value
        if not self.per_token:
            array = self._array(value, where)
            expected = (n, *self.shape)
            if array.shape != expected:
                raise ValueError(f"{where}: {self.arg} shape expected {_tuple(['rows', *filter(None, [self.dims])])} = "
                                 f"{expected}, got {array.shape}")  # fmt: skip
            self._check_dtype(array, where)
            return self._convert(array, place, where)
        if isinstance(value, (str, bytes)) or not isinstance(value, (Sequence, np.ndarray)):
            raise ValueError(f"{where}: {self.arg} must be a sequence of (T, {self.dims}) arrays, one per {unit}, "
                             f"got {type(value).__name__}")  # fmt: skip
        if len(value) != n:
            raise ValueError(f"{where}: expected {n} {self.arg} arrays (one per {unit}), got {len(value)}")
        arrays = [self._array(a, f"{where}, {unit} {i!r}") for a, i in zip(value, ids, strict=True)]
        if lengths is None:  # hidden: it sets each row's T
            lengths = np.array([a.shape[0] if a.ndim else -1 for a in arrays], dtype=np.int64)
        for array, length, i in zip(arrays, lengths, ids, strict=True):
            at = f"{where}, {unit} {i!r}"
            if array.ndim != 1 + len(self.shape) or array.shape[1:] != self.shape or array.shape[0] != length:
                hidden = self.name == "hidden"
                raise ValueError(f"{at}: {self.arg} shape expected {_tuple(['T', *self.dims.split(', ')[:len(self.shape)]])} = "
                                 f"{_tuple(['T' if hidden else length, *self.shape])}{'' if hidden else ' to match hidden'}, "
                                 f"got {array.shape}")  # fmt: skip
            if not 1 <= length <= max_length:
                raise ValueError(f"{at}: expected 1 to max_length = {max_length} tokens, got {length}")
            self._check_dtype(array, at)
        flat = self._convert(np.concatenate(arrays) if arrays else np.empty((0, *self.shape)), place, where)
        return (flat, lengths) if self.name == "hidden" else flat

    def _array(self, value: Any, where: str) -> np.ndarray:
        if self.tensor and not isinstance(value, np.ndarray):
            raise ValueError(f"{where}: {self.arg} must be a numpy array, got {type(value).__name__}")
        return np.asarray(value)

    def _check_dtype(self, array: np.ndarray, where: str) -> None:
        kind = array.dtype
        ok = {"float": np.issubdtype(kind, np.floating),
              "int": np.issubdtype(kind, np.integer) and kind != np.bool_,
              "number": np.issubdtype(kind, np.number) and kind != np.bool_}[self.accepts]  # fmt: skip
        if not ok:
            words = {"float": "floats", "int": "integers", "number": "numbers"}[self.accepts]
            raise ValueError(f"{where}: {self.arg} must be {words}, got dtype {kind}")

    def _convert(self, array: np.ndarray, place: Path, where: str) -> np.ndarray:
        if self.accepts == "int" and array.size:  # a narrower stored integer must hold every value
            info = np.iinfo(self.dtype)
            if array.min() < info.min or array.max() > info.max:
                raise DataError(place, f"{where}: {self.arg} beyond {np.dtype(self.dtype)}, from {array.min()} to "
                                f"{array.max()}")  # fmt: skip
        with np.errstate(over="ignore"):  # overflow becomes inf, which the finite check reports
            return np.ascontiguousarray(array, dtype=self.dtype)


def _label(kind: str) -> Column:
    base = {"classification": dict(dtype=np.int64), "regression": dict(dtype=np.float32, accepts="number", finite=True),
            "span": dict(dtype=np.int64, shape=(2,), dims="start, end", rule=_span_rule)}[kind]  # fmt: skip
    return Column("label", "labels", switch="label_kind", **base)


ID = Column("id", "ids")
LABELS = {kind: _label(kind) for kind in LABEL_KINDS}


def _hidden(m: Mapping, per_token: bool) -> Column:
    return Column("hidden", "hidden", np.float16, (m["num_hidden_states"], m["hidden_size"]), "L, H", per_token,
                  "float", finite=True, sizes="num_hidden_states, hidden_size")  # fmt: skip


def _logits(m: Mapping, per_token: bool) -> Column:
    width = 2 if per_token else m["encoder_outputs"]
    return Column("encoder_logits", "encoder_logits", np.float32, (width,), "2" if per_token else "C", per_token,
                  "float", finite=True, switch="encoder_logits", sizes="" if per_token else "encoder_outputs")  # fmt: skip


# --------------------------------------------------------------------------- layouts


@dataclass(frozen=True)
class Layout:
    """How one kind of store lays out its rows (see the module docstring)."""

    name: str
    unit: str
    """What a row is, in messages."""
    per_token: bool
    """hidden holds each token (a list column) rather than one vector per layer."""
    label_kinds: tuple[str, ...]
    before: tuple[Column, ...] = ()
    """Columns between id and hidden."""
    after: tuple[Column, ...] = ()
    """Columns between hidden and label."""
    logits_per_token: bool = False
    selections: tuple[str, ...] = ("tokens",)

    def columns(self, m: Mapping) -> list[Column]:
        """This store's columns in order, from its manifest (or `StoreSpec.to_dict`)."""
        kind = m.get("label_kind")
        logits = _logits(m, self.logits_per_token) if m.get("encoder_logits") else None
        return [c for c in (ID, *self.before, _hidden(m, self.per_token), *self.after, LABELS.get(kind), logits) if c]

    def suggest_rows(self, spec) -> int:
        if self.per_token:
            return suggest_window_rows(spec.num_hidden_states, spec.hidden_size, spec.max_length)
        return suggest_shard_rows(spec.num_hidden_states, spec.hidden_size)

    def check(self, m: Mapping) -> None:
        """The manifest's label kind and encoder-output fields fit this layout (ConfigError)."""
        selection, kind = m["selection"], m.get("label_kind")
        if selection not in self.selections:
            raise ConfigError(f"token_layout: {self.name!r} needs selection 'tokens', got selection {selection!r}")
        if kind is not None and kind not in self.label_kinds:
            raise ConfigError(f"label_kind: a {self.name} store (selection {selection!r}) holds {' or '.join(self.label_kinds)} "
                              f"labels, not {kind!r}")  # fmt: skip
        outputs = m.get("encoder_outputs")
        if self.logits_per_token and outputs is not None:
            raise ConfigError("encoder_outputs: a windows store's encoder logits are (start, end) per token; leave it null")
        if not self.logits_per_token and bool(m.get("encoder_logits")) != (outputs is not None):
            raise ConfigError(f"encoder_logits: a {self.name} store's encoder logits come with their width, "
                              f"encoder_outputs (got encoder_logits {m.get('encoder_logits')}, encoder_outputs {outputs})")  # fmt: skip

    # -- writing

    def table(self, m: Mapping, index: int, given: dict[str, Any], ids: list[str], place: Path) -> pa.Table:
        """One shard's table from a batch (`given`: column name -> input), every value checked
        first; errors name the shard and the row."""
        where, columns = f"shard {index}", self.columns(m)
        names = {c.name for c in columns}
        for name, value in given.items():
            if value is not None and name not in names:
                switch = {"label": "label_kind", "encoder_logits": "encoder_logits"}.get(name)
                why = f"the spec's {switch} is {_setting(m.get(switch))}" if switch else f"a {self.name} store has no such column"
                raise ValueError(f"{where}: {_arg(name)} not taken by this store ({why})")
        values, lengths = {"id": ids}, None
        for c in columns[1:]:
            if given.get(c.name) is None:
                why = f"the spec's {c.switch} is {_setting(m.get(c.switch))}" if c.switch else f"a {self.name} store"
                raise ValueError(f"{where}: {c.arg} needed ({why}), got none")
            out = c.gather(given[c.name], ids, lengths, where, self.unit, place, m["max_length"])
            if c.name == "hidden" and self.per_token:
                out, lengths = out
            values[c.name] = out
        row_starts = None if lengths is None else _starts(lengths)
        check_values(place, f"{where}: ", columns, values, row_starts, write=True)
        lists = _lists_over(row_starts) if row_starts is not None else None
        return pa.table({c.name: c.to_arrow(values[c.name], lists) for c in columns})

    # -- reading

    def check_schema(self, file: Path, schema: pa.Schema, m: Mapping) -> list[Column]:
        """The shard's columns are this store's, with their types; returns them."""
        columns = self.columns(m)
        for c in columns:
            if c.name not in schema.names:
                raise DataError(file, f"no {c.name!r} column" + (f", but the manifest's {c.switch} is "
                                                                 f"{_setting(m.get(c.switch))}" if c.switch else ""))  # fmt: skip
            found = schema.field(c.name).type
            shape = c.shape_in(found)  # said first: arrow_type() fails on huge sizes
            if c.sizes and shape not in (None, c.shape):
                raise DataError(file, f"{c.name!r} holds ({c.dims}) = {_tuple(shape)} per "
                                f"{'token' if c.per_token else self.unit}, but the manifest has {c.sizes} = "
                                f"{_tuple(c.shape)}")  # fmt: skip
            if not c.fits(found):
                raise DataError(file, f"{c.name!r} expected {c.arrow_type()}, found {found}")
        for name, switch in (("label", "label_kind"), ("encoder_logits", "encoder_logits")):
            if name in schema.names and name not in {c.name for c in columns}:
                raise DataError(file, f"has a{'n' if name[0] in 'aeiou' else ''} {name!r} column, but the manifest's "
                                f"{switch} is {_setting(m.get(switch))}")  # fmt: skip
        return columns

    def read(self, file: Path, table: pa.Table, m: Mapping) -> Shard:
        """A shard's table as arrays, checked: types, no nulls, each row's token counts, value rules."""
        columns = self.check_schema(file, table.schema, m)
        values, row_starts = {}, None
        ids = table.column("id").to_pylist()
        for c in columns:
            array = table.column(c.name).combine_chunks()
            if _has_nested_nulls(array):
                raise DataError(file, f"column {c.name!r} has null values")
            if c is ID:
                values["id"] = ids
                continue
            if c.per_token:
                starts = _row_starts(array)
                if row_starts is None:  # hidden: each row's T
                    lengths = np.diff(starts)
                    bad = (lengths < 1) | (lengths > m["max_length"])
                    if bad.any():
                        k = int(np.argmax(bad))
                        raise DataError(file, f"a {self.unit} of {lengths[k]} tokens; expected 1 to max_length = "
                                        f"{m['max_length']}", key=ids[k])  # fmt: skip
                    row_starts = starts
                elif not np.array_equal(starts, row_starts):
                    k = int(np.argmax(np.diff(starts) != np.diff(row_starts)))
                    raise DataError(file, f"{c.name!r} has {np.diff(starts)[k]} tokens, 'hidden' has "
                                    f"{np.diff(row_starts)[k]}", key=ids[k])  # fmt: skip
                array = array.flatten()
            values[c.name] = c.from_arrow(array)
        check_values(file, "", columns, values, row_starts)
        return Shard(values, row_starts, frozenset(c.name for c in columns if c.per_token))

    def count_column(self, m: Mapping) -> str | None:
        """The smallest per-token column, whose offsets alone give a shard's token count."""
        return next((c.name for c in self.columns(m) if c.per_token and c.name != "hidden"), None)


LAYOUTS = {
    "vectors": Layout("vectors", "row", False, ("classification", "regression"), selections=("cls", "mean")),
    "windows": Layout("windows", "window", True, ("span",), before=(Column("example_id", "example_ids"),),
                      after=(Column("offsets", "offsets", np.int32, (2,), "2", True, rule=_offsets_rule),),
                      logits_per_token=True),
    "sentences": Layout("sentences", "row", True, ("classification", "regression"),
                        after=(Column("segments", "segments", np.int8, (), "", True, rule=_segments_rule),)),
}  # fmt: skip
DEFAULT_LAYOUT = {"cls": "vectors", "mean": "vectors", "tokens": "windows"}
"""A manifest without ``token_layout`` takes its selection's layout."""


def layout_of(m: Mapping) -> Layout:
    """The layout of a manifest (or `StoreSpec.to_dict`), checked against its other fields."""
    layout = LAYOUTS[m.get("token_layout") or DEFAULT_LAYOUT[m["selection"]]]
    layout.check(m)
    return layout


# --------------------------------------------------------------------------- arrays


@dataclass
class Shard:
    """A shard's (or a whole store's) columns as arrays: ids as a list, a per-token column flat,
    row i's tokens at ``row_starts[i]:row_starts[i + 1]``."""

    values: dict[str, Any]
    row_starts: np.ndarray | None = None
    per_token: frozenset = field(default_factory=frozenset)

    @property
    def ids(self) -> list[str]:
        return self.values["id"]

    def __len__(self) -> int:
        return len(self.values["id"])

    def get(self, name: str):
        return self.values.get(name)

    def take(self, rows) -> Shard:
        """The rows ``rows`` (indices, or a slice of a layout without tokens) in that order, each
        row's tokens kept together and in order."""
        tokens = None
        if self.row_starts is not None:
            rows = np.asarray(rows)
            lengths = np.diff(self.row_starts)[rows]
            starts = _starts(lengths)
            # Token j of the new order comes from its row's old start plus j's place in the row.
            tokens = np.arange(int(starts[-1]), dtype=np.int64) + np.repeat(self.row_starts[:-1][rows] - starts[:-1], lengths)
        else:
            starts = None

        def pick(name, v):
            at = tokens if name in self.per_token else rows
            return [v[i] for i in at] if isinstance(v, list) and not isinstance(at, slice) else v[at]

        return replace(self, values={k: pick(k, v) for k, v in self.values.items()}, row_starts=starts)


def join(pieces: list[Shard]) -> Shard:
    """Shards of a layout without tokens, one after the other."""
    if len(pieces) == 1:
        return pieces[0]
    values = {k: (sum((p.values[k] for p in pieces), []) if isinstance(v, list) else np.concatenate([p.values[k] for p in pieces]))
              for k, v in pieces[0].values.items()}  # fmt: skip
    return replace(pieces[0], values=values)


def check_values(place: Path, where: str, columns: list[Column], values: dict, row_starts: np.ndarray | None,
                 write: bool = False) -> None:  # fmt: skip
    """The value rules of `columns` (offsets, segments, span labels) and, when writing, finite
    values (reading checks those once per file: `reader.read_entry`)."""
    lengths = None if row_starts is None else np.diff(row_starts)
    for c in columns:
        if c.rule is not None:
            bad, problem = c.rule(values[c.name], lengths)
            if bad.any():
                i = int(np.argmax(bad))
                row = window_of(row_starts, i) if c.per_token else i
                raise DataError(place, f"{where}{problem(i)}", key=values["id"][row])
        if write and c.finite:
            require_finite(place, f"{where}{finite_problem(c)}", values[c.name], values["id"],
                           row_starts if c.per_token else None)  # fmt: skip


def finite_problem(c: Column) -> str:
    return f"{'hidden states' if c.name == 'hidden' else c.name} contain NaN or inf" + (
        " (or overflow float16 when converted)" if c.name == "hidden" else "")


def require_finite(place: Path, message: str, values: np.ndarray, ids: Sequence[str],
                   row_starts: np.ndarray | None = None) -> None:  # fmt: skip
    """No NaN or inf in `values` (one per row, or with `row_starts` one per token); the
    DataError names the first bad row's id."""
    finite = np.isfinite(values)
    if finite.ndim > 1:
        finite = finite.reshape(len(finite), -1).all(axis=1)
    if not finite.all():
        row = int(np.argmin(finite))
        raise DataError(place, message, key=ids[row if row_starts is None else window_of(row_starts, row)])


def window_of(row_starts: np.ndarray, token: int) -> int:
    """The row that flat token position `token` falls in."""
    return int(np.searchsorted(row_starts, token, side="right")) - 1


def _starts(lengths: np.ndarray) -> np.ndarray:
    starts = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=starts[1:])
    return starts


def _lists_over(row_starts: np.ndarray) -> Callable:
    """A maker of list columns whose rows start at ``row_starts`` (int32 offsets; int64 where
    they would overflow)."""
    if row_starts[-1] <= INT32_MAX:
        starts, make = pa.array(row_starts, type=pa.int32()), pa.ListArray.from_arrays
    else:
        starts, make = pa.array(row_starts, type=pa.int64()), pa.LargeListArray.from_arrays
    return lambda values: make(starts, values)


def _row_starts(array: pa.Array) -> np.ndarray:
    """A list array's offsets as (n + 1,) int64 from 0 (the array may be a slice)."""
    offsets = array.offsets.to_numpy().astype(np.int64)
    return offsets - offsets[0]


def _has_nested_nulls(array: pa.Array) -> bool:
    """Nulls anywhere in a (nested) array: in its lists, their items, or the values."""
    while True:
        if array.null_count:
            return True
        if isinstance(array, pa.ExtensionArray):
            array = array.storage
        elif isinstance(array, (pa.ListArray, pa.LargeListArray, pa.FixedSizeListArray)):
            array = array.flatten()
        else:
            return False


def _setting(value: Any) -> str:
    return "null" if value is None else str(value).lower() if isinstance(value, bool) else repr(value)


def _tuple(items) -> str:
    return "(" + ", ".join(map(str, items)) + ("," if len(items) == 1 else "") + ")"


def _arg(name: str) -> str:
    return {"id": "ids", "example_id": "example_ids", "label": "labels"}.get(name, name)
