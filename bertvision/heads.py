"""What every head kind shares: the data a head trains on (`HeadData`), a kind's defaults
(`HeadKind`) and `same_source`. The kinds are in `bertvision.sentences.heads` and
`bertvision.spans.heads`; `bertvision.kinds` says which one a store or a head is."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bertvision import store as st
from bertvision.errors import ConfigError


@dataclass
class HeadData:
    """What a head trains and is scored on, in its kind's own form. ``parts`` holds "validation"
    (selection) and the eval splits; `bertvision.train.fit_head` reads only ``train`` and
    ``parts["validation"]``."""

    spec: dict  # the task spec recorded in the store's manifest
    manifest: dict  # the train split's (encoder, checkpoint, shapes)
    train: Any
    train_rows: int  # examples (span stores: windows) trained on
    parts: dict[str, Any] = field(default_factory=dict)

    @property
    def evals(self) -> list[str]:
        return [p for p in self.parts if p != "validation"]


def same_source(manifest: dict) -> dict:
    """`store.check_compatible` arguments asking for the encoder, checkpoint and shape that
    ``manifest`` (a train split's, or a head's) records."""
    return {"num_hidden_states": manifest["num_hidden_states"], "hidden_size": manifest["hidden_size"],
            "encoder": manifest["encoder"], "checkpoint": manifest.get("checkpoint")}  # fmt: skip


class HeadKind:
    """A head kind supplies its data (`load`), its model (`module`, `num_outputs`,
    `model_fields`), seeded batches (`rng`, `batches`) and their `loss`, scoring a part (`score`),
    the metric selection maximises (`selection`), what head_config.json adds (`config_extras`)
    and scoring a saved head on one split (`evaluate`). The loop, saving and loading are
    `bertvision.train`'s, one for every kind."""

    name: str  # the task kind it trains for (a head config's ``task_kind``)
    family: str  # its task family (`bertvision.config.FAMILIES`): the defaults its configs take
    module: type
    layout: str  # the store layout it reads (`bertvision.store.LAYOUTS`)
    store: str  # in messages: "not a <store> store"
    reads: str  # in messages: "a head on <reads> states"

    def rng(self, seed: int):
        """The generator of a seed's batches; its state is part of a resumable training state."""
        return np.random.default_rng(seed)

    def rng_state(self, rng) -> dict:
        return rng.bit_generator.state

    def set_rng_state(self, rng, state: dict) -> None:
        rng.bit_generator.state = state

    def model_fields(self, data: HeadData) -> dict:
        """What the store adds to the head's config beyond its shape (`AdapterPoolerConfig`)."""
        return {}

    def config_extras(self, data: HeadData, chosen: dict) -> dict:
        """What head_config.json records beyond the head, task, encoder and training config."""
        return {"selection": data.manifest.get("selection")}

    def check_store(self, manifest: dict, where) -> None:
        """ConfigError unless the store (a split's manifest) is of this kind's layout."""
        if st.layout_of(manifest).name != self.layout:
            raise ConfigError(f"{where}: not a {self.store} store; a head on {self.reads} states needs one")
