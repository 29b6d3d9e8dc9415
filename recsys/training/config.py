"""The training configuration: one YAML per model (configs/<model>.yaml) with a `model:` block plus the trainer's knobs.

Format (every section optional except `model`; unknown keys are errors that name the dotted field):

    model:        {name: pooling, ...}          # the registry's discriminated union (recsys.models.registry)
    data:         {max_len, batch_size, eval_batch_size, validation_fraction | validation_start, vocab_sizes,
                   shuffle, length_bucketing}
    optimizer:    {embedding, embedding_lr, dense, lr, weight_decay, warmup_steps, schedule, min_lr_ratio}
    precision:    fp32 | bf16                   # bf16 = autocast around the forward; loss and optimizer in fp32
    activation_checkpointing: false             # handed to the model when it supports it (see apply_activation_checkpointing)
    sharding:     {sharding_types: [...], tables: {t_item: [row_wise]}, compute_kernel: fused}
    item_init:    {method: random | co_engagement, window, power, drop_top, norm, seed}   # recsys/training/item_init.py
    epochs, max_steps, checkpoint_every_steps, keep_checkpoints, log_every_steps, seed, device

Why the embedding optimizer is separate from the dense one: TorchRec fuses the embedding update into the backward
(no dense gradient for the tables ever exists); on CPU FBGEMM has only SGD / Adagrad / row-wise Adagrad kernels, so
`adam` is accepted only when the resolved device is CUDA (checked by `check_device_support`).
"""
from __future__ import annotations

import datetime as dt
from typing import Literal

import torch
from pydantic import Field, field_validator, model_validator

from recsys.config import ConfigError, StrictModel
from recsys.models.registry import ModelConfig
from recsys.training.item_init import ItemInitConfig

ShardingType = Literal["table_wise", "row_wise", "column_wise", "table_row_wise", "table_column_wise"]
# data_parallel is deliberately absent: it fails for EmbeddingCollection (sequence tables) on TorchRec 1.8 and would
# replicate million-row tables on every worker (STACK.md).
CPU_EMBEDDING_OPTIMIZERS = ("sgd", "adagrad", "rowwise_adagrad")


class DataConfig(StrictModel):
    max_len: int = Field(64, gt=0, description="newest events of the history kept per row")
    batch_size: int = Field(256, gt=0, description="rows per worker per step")
    eval_batch_size: int = Field(1024, gt=0)
    validation_fraction: float = Field(
        0.1, ge=0.0, lt=1.0, description="the newest fraction of the time range is the validation set"
    )
    validation_start: dt.datetime | None = Field(
        None, description="rows with ts >= this (UTC) are validation; overrides validation_fraction"
    )
    vocab_sizes: dict[str, int] | None = Field(
        None, description="item/category/action/domain/user table sizes; default: max id + 1 seen in the data"
    )
    shuffle: bool = Field(True, description="shuffle the rows each epoch; false: train in time order (the table is "
                          "time-sorted; length bucketing then reorders only within its windows), as streaming training does")
    length_bucketing: int = Field(
        32, ge=0, description="sort rows by history length within windows of this many batches, then shuffle the "
        "batches when `shuffle` is on (less padding: 2-3x faster steps on long-tailed histories); 0 = off",
    )

    @field_validator("vocab_sizes")
    @classmethod
    def _known_vocabs(cls, v: dict[str, int] | None) -> dict[str, int] | None:
        if v is None:
            return v
        known = {"item", "category", "action", "domain", "user"}
        unknown = sorted(set(v) - known)
        if unknown:
            raise ValueError(f"unknown vocabularies {unknown}; known: {sorted(known)}")
        bad = {k: n for k, n in v.items() if n <= 0}
        if bad:
            raise ValueError(f"vocabulary sizes must be > 0, got {bad}")
        return v


class OptimizerConfig(StrictModel):
    embedding: Literal["rowwise_adagrad", "adagrad", "sgd", "adam"] = Field(
        "rowwise_adagrad", description="fused TorchRec embedding optimizer; adam only on CUDA"
    )
    embedding_lr: float = Field(0.05, gt=0)
    dense: Literal["adamw", "adam_pp"] = Field("adamw", description="adam_pp = Adam++ (arXiv 2412.19444)")
    lr: float = Field(1e-3, gt=0, description="dense peak learning rate (Adam++: the initial step size eta_0)")
    weight_decay: float = Field(0.0, ge=0)
    betas: tuple[float, float] = Field(
        (0.9, 0.999),
        description="Adam's (beta1, beta2); the pooling, DIN, ADS and LMN configs use beta2 0.99 (0.999 spiked)",
    )
    warmup_steps: int = Field(100, ge=0)
    schedule: Literal["cosine", "constant"] = "cosine"
    min_lr_ratio: float = Field(0.1, ge=0.0, le=1.0, description="cosine floor as a fraction of the peak lr")
    grad_clip_norm: float | None = Field(
        None, gt=0, description="cap on the global L2 norm of the dense gradients per step (None = no clipping)"
    )


class ShardingConfig(StrictModel):
    sharding_types: list[ShardingType] = Field(
        default_factory=lambda: ["table_wise", "row_wise", "column_wise"],
        description="sharding types the planner may choose for every table",
    )
    tables: dict[str, list[ShardingType]] = Field(
        default_factory=dict, description="per-table override, e.g. {t_item: [row_wise]}"
    )

    @field_validator("sharding_types")
    @classmethod
    def _non_empty(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("at least one sharding type is required")
        return v


class TrainConfig(StrictModel):
    model: ModelConfig
    data: DataConfig = Field(default_factory=DataConfig)
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    precision: Literal["fp32", "bf16"] = "fp32"
    activation_checkpointing: bool = False
    sharding: ShardingConfig = Field(default_factory=ShardingConfig)
    item_init: ItemInitConfig = Field(default_factory=ItemInitConfig)
    epochs: int = Field(1, gt=0)
    max_steps: int | None = Field(None, gt=0, description="stop after this many optimizer steps (across epochs)")
    checkpoint_every_steps: int = Field(200, gt=0)
    keep_checkpoints: int = Field(2, gt=0)
    log_every_steps: int = Field(10, gt=0)
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"

    @model_validator(mode="after")
    def _static_device_checks(self) -> "TrainConfig":
        if self.device == "cpu" and self.optimizer.embedding not in CPU_EMBEDDING_OPTIMIZERS:
            raise ValueError(_adam_message(self.optimizer.embedding))
        return self


def _adam_message(name: str) -> str:
    return (
        f"optimizer.embedding: {name!r} needs CUDA (FBGEMM's fused CPU kernels support only "
        f"{', '.join(CPU_EMBEDDING_OPTIMIZERS)}); use rowwise_adagrad on CPU"
    )


def resolve_device(cfg: TrainConfig) -> torch.device:
    """`auto` -> cuda when usable, else cpu; `cuda` without a GPU is a config error."""
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device: 'cuda' requested but torch.cuda.is_available() is False")
    if cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available()):
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def check_device_support(cfg: TrainConfig, device: torch.device) -> None:
    """Fail before any process group exists when the config asks for what the device cannot do."""
    if device.type != "cuda" and cfg.optimizer.embedding not in CPU_EMBEDDING_OPTIMIZERS:
        raise ConfigError(_adam_message(cfg.optimizer.embedding))
