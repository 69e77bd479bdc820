"""Every setting in one place: frozen dataclasses, one docstring per field, which is its flag's
help (``--adapter-size``; `flags`). `stages`: each stage's; `runs`: a whole run's, the baseline's
and the Ray jobs'; `fields`: what they share, such as the family defaults that `resolved` fills
in for fields left None. Nothing here imports torch, transformers or Ray."""

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
    PredictConfig,
    PredictJobConfig,
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
    "PipelineJobConfig", "PredictConfig", "PredictJobConfig", "RayJobConfig", "SearchConfig", "TrainJobConfig", "TuneJobConfig", "Windowing",
    "add_arguments", "check_choices", "derive", "family", "field_docs", "from_arguments", "from_dict",
]  # fmt: skip
