"""Every setting in one place: frozen dataclasses, one docstring per field.

    stages   FinetuneConfig, EmbedConfig, HeadTrainConfig (a `HeadArchitecture`, an
             `Optimisation`, seeds, the validation carve), SearchConfig, EnsembleConfig, Windowing
    runs     PipelineConfig (`bertvision run`), BaselineGrid, and the Ray jobs' own configs:
             RayJobConfig (extraction), TrainJobConfig, TuneJobConfig, PipelineJobConfig
    fields   the task families, `KindDefaults`, `from_dict`, `field_docs`, `derive`
    flags    the command line: `add_arguments`, `from_arguments`

A field's flag is its name (``--adapter-size``), its help its docstring, its default the field's.
A field left unset (None) where the task family decides (``max_length``: 128 tokens per sentence
example, 384 per SQuAD window) is filled by `resolved` from ``kind_defaults``, and the resolved
config is what a run records. A stage's config is composed from a run's by `derive`; a search
trial changes one with `dataclasses.replace`; `from_dict` reads one back from a config.json.
Nothing here imports torch, transformers or Ray.
"""

from bertvision.config.fields import (
    FAMILIES,
    FAMILY,
    Family,
    KindDefaults,
    check_choices,
    derive,
    family,
    field_docs,
    from_dict,
)
from bertvision.config.flags import add_arguments, from_arguments
from bertvision.config.runs import (
    BaselineGrid,
    PipelineConfig,
    PipelineJobConfig,
    RayJobConfig,
    TrainJobConfig,
    TuneJobConfig,
)
from bertvision.config.stages import (
    MAX_ANSWER_TOKENS,
    EmbedConfig,
    EnsembleConfig,
    FinetuneConfig,
    HeadArchitecture,
    HeadTrainConfig,
    Optimisation,
    SearchConfig,
    Windowing,
)

__all__ = [
    "FAMILIES", "FAMILY", "MAX_ANSWER_TOKENS", "BaselineGrid", "EmbedConfig", "EnsembleConfig", "Family",
    "FinetuneConfig", "HeadArchitecture", "HeadTrainConfig", "KindDefaults", "Optimisation", "PipelineConfig",
    "PipelineJobConfig", "RayJobConfig", "SearchConfig", "TrainJobConfig", "TuneJobConfig", "Windowing",
    "add_arguments", "check_choices", "derive", "family", "field_docs", "from_arguments", "from_dict",
]  # fmt: skip
