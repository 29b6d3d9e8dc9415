"""Model name -> (config class, model class). `ModelConfig` is the discriminated union used in training YAML."""
from __future__ import annotations

from typing import Annotated, Union

from pydantic import Field

from recsys.data.batch import BatchSpec
from recsys.models.ads import ADSConfig, ADSRanker
from recsys.models.base import Ranker
from recsys.models.din import DINConfig, DINRanker
from recsys.models.lmn import LMNConfig, LMNRanker
from recsys.models.longer import LongerConfig, LongerRanker
from recsys.models.pooling import PoolingConfig, PoolingRanker
from recsys.models.transformer import TransformerConfig, TransformerRanker

# Each model file adds its (Config, Model) pair here; the union below is built from this table.
MODELS: dict[str, tuple[type, type]] = {
    "pooling": (PoolingConfig, PoolingRanker),
    "din": (DINConfig, DINRanker),
    "transformer": (TransformerConfig, TransformerRanker),
    "longer": (LongerConfig, LongerRanker),
    "lmn": (LMNConfig, LMNRanker),
    "ads": (ADSConfig, ADSRanker),
}

ModelConfig = Annotated[Union[tuple(cfg for cfg, _ in MODELS.values())], Field(discriminator="name")]  # type: ignore[valid-type]


def build_model(cfg, spec: BatchSpec) -> Ranker:
    try:
        _, cls = MODELS[cfg.name]
    except KeyError:
        raise ValueError(f"model.name: unknown model {cfg.name!r}; choose one of {sorted(MODELS)}") from None
    return cls(cfg, spec)
