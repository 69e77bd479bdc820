"""Every setting in one place: frozen dataclasses, one docstring per field (`stages`: each stage's;
`runs`: a whole run's, the fine-tuning baseline's and the Ray jobs' own; `fields`: what they share;
`flags`: the command line). A field's flag is its name (``--adapter-size``), its help its docstring,
its default the field's. A field left unset (None) where the task family decides (``max_length``:
128 per sentence example, 384 per SQuAD window) is filled by `resolved` from ``kind_defaults``, and
runs record the resolved config. A stage's config is composed from a run's by `derive`; `from_dict`
reads one back from a config.json. Nothing here imports torch, transformers or Ray.
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
