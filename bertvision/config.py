"""Every stage's settings: frozen dataclasses, one docstring per field.

    FinetuneConfig    encoder fine-tuning (sentence and span tasks alike)
    EmbedConfig       hidden-state extraction into a store
    HeadTrainConfig   AdapterPooler heads: a `HeadArchitecture` (the model file's), an
                      `Optimisation`, seeds and the validation carve
    SearchConfig      a Ray Tune + HyperOpt search over heads on stored states
    EnsembleConfig    ensembles of heads (a search's best trials) and the encoder

The command line is derived from these (`add_arguments`, `from_arguments`): a field's flag is its
name (``--adapter-size``), its help is its docstring, its default is the field's. A field left
unset (None) where the task kind decides (``max_length``: 128 tokens per sentence example, 384
per SQuAD window) is filled by `resolved` from ``kind_defaults``, and the resolved config is what
a run records. A search trial changes a config with `dataclasses.replace`; `from_dict` reads one
back from a run's config.json.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import math
import textwrap
import types
import typing
from dataclasses import dataclass, fields, is_dataclass, replace
from functools import cache
from typing import Any, ClassVar, Literal

from bertvision.errors import ConfigError
from bertvision.runtime import check_optimisation

FAMILIES = ("sentence", "span")
"""Task families whose defaults differ: sentence (classification, regression) and span tasks."""
FAMILY = {"classification": "sentence", "regression": "sentence", "span": "span"}
"""Task kind (a task spec's ``kind``) -> its family."""


def check_choices(cfg) -> None:
    """ConfigError for a field typed ``Literal[...]`` (or a tuple of them) holding another value."""
    for name, hint in _hints(type(cfg)).items():
        base, _ = _unwrap(hint)
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
def _hints(cls) -> dict:
    return typing.get_type_hints(cls, globals())


def _unwrap(hint):
    """(type, optional) of ``X | None``."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return args[0], True
    return hint, False


class KindDefaults:
    """A config whose fields left as None take their task family's value (``kind_defaults``)."""

    kind_defaults: ClassVar[dict[str, dict[str, Any]]] = {}

    def resolved(self, family: str):
        """This config with every unset field that the family (or a task kind of it) decides
        filled in (recursively)."""
        family = FAMILY.get(family, family)
        if family not in FAMILIES:
            raise ConfigError(f"task family must be one of {FAMILIES}, not {family!r}")
        changes = {name: by[family] for name, by in self.kind_defaults.items() if getattr(self, name) is None}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, KindDefaults):
                changes[f.name] = value.resolved(family)
        return replace(self, **changes)


@dataclass(frozen=True)
class HeadArchitecture:
    """The head's architecture: what a user (or a search trial) chooses. `AdapterPoolerConfig`
    (bertvision/models/adapter_pooler.py, which builds the model from these) adds the shapes
    the store fixes. A field added here reaches ``bertvision train`` as a flag
    (``--adapter-size``, ``--no-shared``, ...), the run's config.json and head_config.json."""

    adapter_size: int = 64
    """A: width of the adapter's output for each layer."""
    shared: bool = True
    """One adapter Linear for every layer (the LayerWeightShare); off: one per layer."""
    combine: Literal["flatten", "scalar_mix", "mix_first"] = "flatten"
    """How layers are combined: flatten (L*A features, as the original), scalar_mix (softmax
    layer weights over the adapter's outputs, A features), or mix_first (the original's
    "Tenney" order: the layers' H-vectors mixed by softmax weights first, then one adapter, A
    features)."""
    residual: bool = True
    """Concatenate the last layer's H-vector to the combined features before the projection."""
    dropout: float = 0.1
    """Dropout probability before the output projection, in [0, 1)."""
    activation: Literal["gelu", "relu", "tanh"] = "gelu"
    """The adapter's nonlinearity (the original's is GELU)."""
    first_layer: int = 0
    """The first hidden state the adapter reads (0: the embedding output; every later layer up
    to the last is read too, and the residual skip is always the last layer)."""
    init: Literal["torch", "original"] = "torch"
    """The adapter's initial weights: torch's Linear default, or the original's (truncated
    normal, std 1e-3, cut at 2 std; zero bias)."""
    pooling: Literal["mean", "attention", "flatten"] = "mean"
    """Token stores only: how a sentence's tokens become one vector after the adapter: masked
    mean, a learned attention pooling, or flatten (the original GLUE head: every position of
    --positions, padded with zeros, into the output layer). Sentence pairs pool each sentence
    apart (mean, attention), so the order of the two is kept."""
    positions: int = 128
    """Token stores, flatten pooling: the token positions the output layer reads (longer
    examples are cut to their first ones, shorter ones padded with zeros)."""

    def __post_init__(self) -> None:
        value = self.adapter_size
        # bool is an int subclass; True as a size is a mistake, not 1.
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"adapter_size must be a positive integer, got {value!r}")
        value = self.first_layer
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ConfigError(f"first_layer must be an integer >= 0, got {value!r}")
        value = self.positions
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"positions must be a positive integer, got {value!r}")
        for name in ("shared", "residual"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be true or false, got {getattr(self, name)!r}")
        check_choices(self)
        if self.combine == "mix_first" and not self.shared:
            raise ConfigError("--combine mix_first has one adapter, on the mixed layers: --no-shared does not apply")
        d = self.dropout
        if isinstance(d, bool) or not isinstance(d, (int, float)) or not 0 <= d < 1:
            raise ConfigError(f"dropout must be a number in [0, 1), got {d!r}")
        object.__setattr__(self, "dropout", float(d))  # an int 0 from JSON becomes 0.0

    def architecture(self) -> HeadArchitecture:
        """The architecture fields alone (of an `AdapterPoolerConfig`, or of this)."""
        return HeadArchitecture(**{f.name: getattr(self, f.name) for f in fields(HeadArchitecture)})


def _positive(cfg, names: tuple[str, ...]) -> None:
    for name in names:
        value = getattr(cfg, name)
        if value is not None and value <= 0:
            raise ConfigError(f"--{name.replace('_', '-')} must be positive")


@dataclass(frozen=True)
class Windowing:
    """How span tasks' questions and contexts are cut into windows (fine-tuning and embedding
    must agree; the store records it)."""

    doc_stride: int = 128
    """Span tasks: tokens shared by consecutive windows of a long context."""
    max_query_length: int = 64
    """Span tasks: questions are cut to this many tokens."""

    def __post_init__(self):
        _positive(self, ("doc_stride", "max_query_length"))


MAX_ANSWER_TOKENS = 30


@dataclass(frozen=True)
class FinetuneConfig(KindDefaults):
    """Fine-tuning an encoder with a task head (`bertvision.finetune`)."""

    task: str
    """Task name or user task config file."""
    encoder: str | None = None
    """Hugging Face id or folder (default: the bundled all-MiniLM-L6-v2, offline)."""
    data_dir: str | None = None
    """Local data folder holding glue/<Task>/*.tsv and squad2/*-v2.0.json (default:
    $BERTVISION_DATA, else the Hugging Face Hub)."""
    epochs: float = 1.0
    """Training length in epochs; fractions allowed (0.3 stops after 30% of one epoch)."""
    save_at: tuple[float, ...] = ()
    """Also save checkpoints after these epoch fractions (the end is always saved)."""
    lr: float = 5e-5
    """Peak AdamW learning rate (warmup, then linear decay)."""
    batch_size: int = 32
    """Examples (span tasks: windows) per step."""
    warmup: float = 0.1
    """Share of the steps warming the learning rate up from 0."""
    weight_decay: float = 0.01
    """AdamW weight decay (matrices only, not biases or LayerNorm weights)."""
    max_grad_norm: float = 1.0
    """Gradients are clipped to this norm."""
    max_length: int | None = None
    """Tokens per example (span tasks: per window)."""
    windowing: Windowing = Windowing()
    max_answer_tokens: int = MAX_ANSWER_TOKENS
    """Span tasks: longest answer considered, in tokens."""
    seed: int = 0
    """Seeds the task head's initialisation, dropout and the batch order."""
    validation_fraction: float = 0.1
    """Share of train held out for selection (span tasks: of its articles, unless the task has a
    validation split)."""
    validation_seed: int = 0
    """Seed of that carve; keep it equal across runs that are compared."""
    train_examples: int | None = None
    """Sentence tasks: train on a fixed subset of this many examples of the training part, drawn
    (seeded by --validation-seed) after the validation carve, which is unchanged (default: all)."""
    eval_batch_size: int = 64
    """Examples per forward pass when scoring."""
    device: str | None = None
    """cpu, cuda, cuda:N (default: cuda when available)."""
    score_dev: bool = True
    """Score the dev/test split(s) at the end, once per saved checkpoint."""

    kind_defaults: ClassVar = {"max_length": {"sentence": 128, "span": 384}}

    def __post_init__(self):
        check_optimisation(self)
        if not (self.epochs > 0 and math.isfinite(self.epochs)):
            raise ConfigError(f"--epochs must be in (0, inf), not {self.epochs}")
        for f in self.save_at:
            if not (f > 0 and math.isfinite(f)):
                raise ConfigError(f"--save-at fractions must be in (0, inf), not {f}")
            if f > self.epochs + 1e-9:
                raise ConfigError(f"--save-at {f} lies beyond --epochs {self.epochs}")
        _positive(self, ("lr", "batch_size", "max_length", "max_answer_tokens", "eval_batch_size", "train_examples"))

    def checkpoint_fractions(self) -> list[float]:
        return sorted({*self.save_at, self.epochs})


@dataclass(frozen=True)
class EmbedConfig(KindDefaults):
    """Extracting every layer's hidden states into a store (`bertvision.embed`)."""

    task: str
    """Task name or user task config file."""
    checkpoint: str | None = None
    """A 'bertvision finetune' checkpoint folder, an encoder folder or Hub id (default: the
    bundled encoder, not fine-tuned)."""
    splits: tuple[str, ...] | None = None
    """Splits to embed (default: every split found)."""
    data_dir: str | None = FinetuneConfig.data_dir
    """Local data folder (default: $BERTVISION_DATA, else the Hugging Face Hub)."""
    selection: Literal["cls", "mean", "tokens"] | None = None
    """cls: first position of every layer; mean: mean over real tokens; tokens: every real token
    of every window (span tasks) or of every sentence or pair (sentence tasks, with each
    token's sentence), no padding."""
    max_length: int | None = None
    """Tokens per example (span tasks: per window; use fine-tuning's)."""
    windowing: Windowing = Windowing()
    train_examples: int | None = None
    """Sentence tasks: store only the train rows heads can read: the validation part and the
    seeded subset of this many training examples that fine-tuning's and heads' --train-examples
    draw (carved with --validation-fraction and --validation-seed); default: every row."""
    validation_fraction: float = FinetuneConfig.validation_fraction
    """With --train-examples: share of train held out for selection; must equal fine-tuning's."""
    validation_seed: int = FinetuneConfig.validation_seed
    """With --train-examples: seed of that carve; must equal fine-tuning's."""
    batch_size: int = 16
    """Examples per forward pass, after sorting by length."""
    shard_rows: int | None = None
    """Rows per Parquet shard (default: about 64 MiB a shard)."""
    quantize: Literal["int8"] | None = None
    """Opt-in dynamic int8 quantisation on CPU: faster, slightly different values."""
    device: str | None = None
    """cpu, cuda, cuda:N (default: cuda when available)."""

    kind_defaults: ClassVar = {"selection": {"sentence": "cls", "span": "tokens"},
                               "max_length": FinetuneConfig.kind_defaults["max_length"]}  # fmt: skip

    def __post_init__(self):
        check_choices(self)
        _positive(self, ("max_length", "batch_size", "shard_rows", "train_examples"))


@dataclass(frozen=True)
class Optimisation(KindDefaults):
    """How a head is trained: AdamW (no decay on biases), warmup and linear decay, early stopping."""

    lr: float = 1e-3
    """Peak AdamW learning rate."""
    batch_size: int | None = None
    """Examples (span stores: windows) per step."""
    epochs: int | None = None
    """Maximum epochs; early stopping usually ends sooner."""
    patience: int | None = None
    """Stop after this many epochs without a better validation score."""
    warmup: float = 0.1
    """Share of the steps warming the learning rate up from 0."""
    weight_decay: float = 0.01
    """AdamW weight decay (matrices only)."""

    kind_defaults: ClassVar = {"batch_size": {"sentence": 64, "span": 32}, "epochs": {"sentence": 20, "span": 6},
                               "patience": {"sentence": 4, "span": 2}}  # fmt: skip

    def __post_init__(self):
        check_optimisation(self)
        _positive(self, ("batch_size", "epochs", "patience"))


@dataclass(frozen=True)
class HeadTrainConfig(KindDefaults):
    """Training AdapterPooler heads on a store, one per seed (`bertvision.train`). The head kind
    (classification, regression, spans) comes from the store's manifest."""

    store: str
    """Store folder written by 'bertvision embed' (one sub-folder per split)."""
    head: HeadArchitecture = HeadArchitecture()
    optim: Optimisation = Optimisation()
    seeds: tuple[int, ...] = (0, 1, 2)
    """Head seeds; one head each, reported as mean and standard deviation."""
    validation_fraction: float = FinetuneConfig.validation_fraction
    """Share of train held out for selection (span stores without a validation split: of its
    articles); must equal fine-tuning's, so the encoder never trained on it."""
    validation_seed: int = FinetuneConfig.validation_seed
    """Seed of that carve; must equal fine-tuning's."""
    max_answer_tokens: int = MAX_ANSWER_TOKENS
    """Span stores: longest answer considered, in tokens."""
    data_dir: str | None = None
    """Span stores: where the task's text lives (contexts, gold answers); default $BERTVISION_DATA."""
    device: str | None = None
    """cpu, cuda, cuda:N (default: cuda when available)."""
    eval_splits: tuple[str, ...] | None = None
    """Splits scored once at the end (default: the task's labelled eval splits in the store)."""
    train_examples: int | None = None
    """Sentence stores: train on a fixed subset of this many examples of the training part,
    drawn (seeded by --validation-seed) after the validation carve, as fine-tuning's
    --train-examples draws it: the same N examples (default: all)."""

    def __post_init__(self):
        check_optimisation(self)
        _positive(self, ("max_answer_tokens", "train_examples"))

    def for_seed(self, seed: int) -> HeadTrainConfig:
        return replace(self, seeds=(seed,))


@dataclass(frozen=True)
class SearchConfig(KindDefaults):
    """A search over head hyperparameters on stored states (`bertvision.search`, driven by Ray
    Tune with HyperOpt in `ray_jobs/tune.py`). Trials select on the validation part only."""

    stores: tuple[str, ...]
    """Store folders of one task (cls, mean or token states; other checkpoints): the store is
    itself one of the choices."""
    trials: int = 48
    """Trials in all; the first is the default head configuration."""
    initial_points: int = 12
    """Trials drawn at random before HyperOpt's TPE models the finished ones."""
    max_concurrent: int = 2
    """Trials running at once (TPE proposes each new one from the trials finished so far)."""
    cpus_per_trial: float = 1.0
    """CPUs each trial asks Ray for (and its torch threads)."""
    gpus_per_trial: float = 0.0
    """GPUs each trial asks Ray for; a fraction lets several trials share one GPU."""
    grace_period: int = 2
    """ASHA: epochs every trial runs before it may be stopped for a weak validation score."""
    epochs: int | None = None
    """Maximum epochs per trial."""
    patience: int | None = None
    """A trial stops after this many epochs without a better validation score."""
    seed: int = 0
    """Seeds HyperOpt and every trial's head."""
    top_k: int = 5
    """The best trials kept as ensemble members."""
    validation_fraction: float = FinetuneConfig.validation_fraction
    """Share of train held out for selection; must equal fine-tuning's."""
    validation_seed: int = FinetuneConfig.validation_seed
    """Seed of that carve; must equal fine-tuning's."""
    data_dir: str | None = None
    """Span stores: where the task's text lives (default: $BERTVISION_DATA)."""
    device: str | None = None
    """cpu, cuda, cuda:N (default: cuda when available)."""

    kind_defaults: ClassVar = {"epochs": Optimisation.kind_defaults["epochs"],
                               "patience": Optimisation.kind_defaults["patience"]}  # fmt: skip

    def __post_init__(self):
        if not self.stores:
            raise ConfigError("--stores: give at least one store folder")
        if len(set(self.stores)) != len(self.stores):
            raise ConfigError("--stores: a store is given twice")
        check_optimisation(self)
        _positive(self, ("trials", "initial_points", "max_concurrent", "cpus_per_trial", "grace_period",
                         "epochs", "patience", "top_k"))  # fmt: skip
        if self.gpus_per_trial < 0:
            raise ConfigError(f"--gpus-per-trial must be >= 0, not {self.gpus_per_trial}")


@dataclass(frozen=True)
class EnsembleConfig:
    """Ensembles of heads and the fine-tuned encoder's stored logits (`bertvision.ensemble`):
    sentence heads averaged with weights chosen on validation, span heads by max or mean."""

    store: str | None = None
    """Store folder the --heads and --encoder members are scored on (a token store for spans);
    optional with --from-tune, whose sentence trials carry their own stores (the encoder's
    logits then come from the best trial's store)."""
    heads: tuple[str, ...] = ()
    """seed-<k> folders of heads (span heads, or sentence heads of one task)."""
    from_tune: str | None = None
    """A search folder written by 'bertvision tune': its best --top-k trials are the members."""
    top_k: int = 5
    """With --from-tune: how many of the best trials (by validation score) are members."""
    encoder: bool = False
    """Include the fine-tuned encoder's own logits (stored beside the states) as a member."""
    methods: tuple[Literal["max", "mean"], ...] = ("max", "mean")
    """Span ensembles: how members' probabilities combine: element-wise max, mean, or both."""
    max_answer_tokens: int = MAX_ANSWER_TOKENS
    """Longest answer considered, in tokens."""
    validation_fraction: float = FinetuneConfig.validation_fraction
    """Share of train's articles held out when the store has no validation split."""
    validation_seed: int = FinetuneConfig.validation_seed
    """Seed of that carve; must equal fine-tuning's."""
    data_dir: str | None = None
    """Where the task's text lives (default: $BERTVISION_DATA)."""
    device: str | None = None
    """cpu, cuda, cuda:N (default: cuda when available)."""

    def __post_init__(self):
        if not self.heads and not self.encoder and self.from_tune is None:
            raise ConfigError("an ensemble needs members: --from-tune, --heads and/or --encoder")
        _positive(self, ("top_k",))
        if len(self.heads) + self.encoder + (self.top_k if self.from_tune is not None else 0) < 2:
            raise ConfigError("an ensemble needs at least two members")
        if self.store is None and self.from_tune is None:  # span ensembles always need it
            raise ConfigError("--store: give the store folder (only --from-tune members carry their own stores)")
        if not self.methods:
            raise ConfigError("--method: give at least one of max, mean")
        check_choices(self)
        _positive(self, ("max_answer_tokens",))


# ---------------------------------------------------------------------------------------------
# From and to JSON


def from_dict(cls, data: dict):
    """A config from its `dataclasses.asdict` form (a run's config.json): nested configs and
    tuples restored, unknown keys refused."""
    if not isinstance(data, dict):
        raise ConfigError(f"{cls.__name__}: expected a mapping, got {type(data).__name__}")
    hints = _hints(cls)
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{cls.__name__}: unknown keys {unknown}; known: {sorted(known)}")
    values = {}
    for name, value in data.items():
        inner = _dataclass_of(hints[name])
        if inner is not None and isinstance(value, dict):
            value = from_dict(inner, value)
        elif isinstance(value, list):
            value = tuple(value)
        values[name] = value
    return cls(**values)


# ---------------------------------------------------------------------------------------------
# The command line, derived from the configs


def add_arguments(parser: argparse.ArgumentParser, cls, *, skip: tuple[str, ...] = (),
                  required: tuple[str, ...] = (), flags: dict[str, str] | None = None) -> None:  # fmt: skip
    """One option per field of ``cls`` (nested configs flattened), named ``--field-name``
    (``flags`` renames), with the field's docstring and default as its help."""
    flags = flags or {}
    for path, f, owner in _leaves(cls):
        name = path[-1]
        if name in skip:
            continue
        hint = _hints(owner)[name]
        flag = flags.get(name, "--" + name.replace("_", "-"))
        kw: dict[str, Any] = {"dest": "__".join(path), "help": _help(owner, f)}
        base, _ = _unwrap(hint)
        origin = typing.get_origin(base)
        if base is bool:
            kw["action"] = argparse.BooleanOptionalAction
        elif origin is tuple:
            item = typing.get_args(base)[0]
            kw["nargs"] = "*" if f.default == () else "+"
            kw.update(_scalar(item, name.removesuffix("s")))
        else:
            kw.update(_scalar(base, name))
        if name in required:
            kw["required"] = True
        else:
            kw["default"] = None if f.default is dataclasses.MISSING else f.default
        # as given: Python 3.10's BooleanOptionalAction appends its own "(default: True)"
        parser.add_argument(flag, **kw).help = kw["help"]


def from_arguments(cls, args: argparse.Namespace, **given):
    """The config ``cls`` from options made by `add_arguments` (``given`` overrides)."""
    return _build(cls, vars(args), (), given)


def _build(cls, values: dict, prefix: tuple[str, ...], given: dict):
    kwargs = {}
    for f in fields(cls):
        path = (*prefix, f.name)
        inner = _dataclass_of(_hints(cls)[f.name])
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
        inner = _dataclass_of(_hints(cls)[f.name])
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


def _dataclass_of(hint):
    base, _ = _unwrap(hint)
    return base if isinstance(base, type) and is_dataclass(base) else None


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


@cache
def field_docs(cls) -> dict[str, str]:
    """Field name -> the docstring under it in the class body (one line of text)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not is_dataclass(klass):
            continue
        tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        body = tree.body[0].body
        for node, nxt in zip(body, body[1:], strict=False):
            if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                    and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant)
                    and isinstance(nxt.value.value, str)):  # fmt: skip
                docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


__all__ = [
    "EmbedConfig", "EnsembleConfig", "FinetuneConfig", "HeadArchitecture", "HeadTrainConfig",
    "Optimisation", "SearchConfig", "Windowing", "add_arguments", "field_docs", "from_arguments", "from_dict",
]  # fmt: skip
