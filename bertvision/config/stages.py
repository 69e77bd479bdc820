"""Every stage's settings: frozen dataclasses, one docstring per field (see the package doc)."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import ClassVar, Literal

from bertvision.config.fields import KindDefaults, check_choices, positive
from bertvision.errors import ConfigError
from bertvision.runtime import check_optimisation


@dataclass(frozen=True)
class HeadArchitecture:
    """The head's architecture, as a user or a search trial chooses it (`AdapterPoolerConfig` adds
    the shapes the store fixes); a field added here becomes a flag, recorded in the configs."""

    adapter_size: int = 64
    """A: width of the adapter's output for each layer."""
    shared: bool = True
    """One adapter Linear for every layer (the LayerWeightShare); off: one per layer."""
    combine: Literal["flatten", "scalar_mix", "mix_first"] = "flatten"
    """How layers are combined: flatten (L*A features, as the original), scalar_mix (softmax layer
    weights over the adapter's outputs, A features), or mix_first (the original's "Tenney" order:
    the layers' H-vectors mixed by softmax weights first, then one adapter, A features)."""
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
        for name, what, low in (("adapter_size", "a positive integer", 1), ("first_layer", "an integer >= 0", 0),
                                ("positions", "a positive integer", 1)):  # fmt: skip
            value = getattr(self, name)
            # bool is an int subclass; True as a size is a mistake, not 1.
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ConfigError(f"{name} must be {what}, got {value!r}")
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


@dataclass(frozen=True)
class Windowing:
    """Span tasks' windows (fine-tuning and embedding must agree; the store records them)."""

    doc_stride: int = 128
    """Span tasks: tokens shared by consecutive windows of a long context."""
    max_query_length: int = 64
    """Span tasks: questions are cut to this many tokens."""

    def __post_init__(self):
        positive(self, ("doc_stride", "max_query_length"))


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
    validation split). Sentence tasks: each part needs at least 4 examples, 2 per label."""
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
        positive(self, ("lr", "batch_size", "max_length", "max_answer_tokens", "eval_batch_size", "train_examples"))

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
    of every window (span tasks) or example (sentence tasks, with each token's sentence), no
    padding."""
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
        positive(self, ("max_length", "batch_size", "shard_rows", "train_examples"))


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
        positive(self, ("batch_size", "epochs", "patience"))


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
    """Sentence stores: train on a fixed subset of this many examples of the training part: the
    same N examples that fine-tuning's --train-examples draws (default: all)."""

    def __post_init__(self):
        check_optimisation(self)
        positive(self, ("max_answer_tokens", "train_examples"))

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
    """Trials running at once: TPE proposes them together from the trials ended before them, so a
    search is the same at any timing; a batch waits for its slowest trial."""
    cpus_per_trial: float = 1.0
    """CPUs each trial asks Ray for (and its torch threads)."""
    gpus_per_trial: float = 0.0
    """GPUs each trial asks Ray for; a fraction lets several trials share one GPU."""
    grace_period: int = 2
    """Epochs every trial runs before it may be stopped for a weak validation score (ASHA's
    rule, `search.Rungs`)."""
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
        positive(self, ("trials", "initial_points", "max_concurrent", "cpus_per_trial", "grace_period",
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
        positive(self, ("top_k",))
        if len(self.heads) + self.encoder + (self.top_k if self.from_tune is not None else 0) < 2:
            raise ConfigError("an ensemble needs at least two members")
        if self.store is None and self.from_tune is None:  # span ensembles always need it
            raise ConfigError("--store: give the store folder (only --from-tune members carry their own stores)")
        if not self.methods:
            raise ConfigError("--method: give at least one of max, mean")
        check_choices(self)
        positive(self, ("max_answer_tokens",))
