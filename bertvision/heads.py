"""What every head kind shares: its data (`HeadData`), its defaults (`HeadKind`), `same_source`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class HeadData:
    """What a head trains and is scored on, in its kind's own form: ``parts`` holds "validation"
    (selection; `fit_head` reads only it and ``train``) and the eval splits."""

    spec: dict  # the task spec recorded in the store's manifest
    manifest: dict  # the train split's (encoder, checkpoint, shapes)
    train: Any
    train_rows: int  # examples (span stores: windows) trained on
    parts: dict[str, Any] = field(default_factory=dict)

    @property
    def evals(self) -> list[str]:
        return [p for p in self.parts if p != "validation"]


def same_source(manifest: dict) -> dict:
    """`store.check_compatible` arguments for the encoder, checkpoint and shape of ``manifest``."""
    return {"num_hidden_states": manifest["num_hidden_states"], "hidden_size": manifest["hidden_size"],
            "encoder": manifest["encoder"], "checkpoint": manifest.get("checkpoint")}  # fmt: skip


class HeadKind:
    """What differs between head kinds: data, model, batches and loss, scoring, the selection
    metric; the loop, saving and loading are `bertvision.train`'s, one for every kind."""

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
