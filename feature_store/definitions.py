"""Feature definitions: one typed config read by the offline builder and the online stores alike.

Why one definition: the training table and the serving features must be computed by the same rules (which actions
count as history, how long the sequence is, which item attributes are joined), or the model sees different inputs
online than it was trained on. `configs/features.yaml` holds the defaults; `--set a.b=c` overrides any field.

Sequence fields: the TRAINING contract (recsys/data/schemas.py) always carries seq_item_id, seq_category,
seq_action, seq_domain, seq_time_gap, so `sequence_fields` must include item_id, category, action, domain, time_gap.
It may add further item attributes (each must also be listed in `item_attributes`): they become extra list columns
`seq_<attr>` after the contract's columns. `item_attributes` are joined on the candidate as `item_<attr>`
(`category` is the contract's `item_category`); `user_attributes` become scalar columns `user_<attr>` read from the
users table. Extra attribute columns must be integer or float columns of the items/users parquet files.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from recsys.config import CONFIG_DIR, StrictModel, load_config
from recsys.data.schemas import Action

ActionName = Literal["impression", "click", "like", "share", "purchase"]
CONTRACT_SEQ_FIELDS = ("item_id", "category", "action", "domain", "time_gap")
EVENT_SEQ_FIELDS = ("item_id", "action", "domain", "time_gap")
DEFAULT_CONFIG = CONFIG_DIR / "features.yaml"


class OnlineConfig(StrictModel):
    """Which online store backend serves the sequences, and its knobs."""

    backend: Literal["embedded", "redis"] = "embedded"
    # Sequence length kept per user online; null = the offline max_len (keep them equal for train/serve parity).
    max_len: int | None = Field(default=None, ge=1)
    # embedded: directory of the write-ahead log and snapshots.
    path: str = "runs/online_store"
    # embedded: fsync the log before acknowledging an append (False only for throwaway stores).
    fsync: bool = True
    # embedded: write a snapshot and start a new log once the log exceeds this many bytes.
    snapshot_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)
    # redis: connection URL and key prefix (several stores can share one server).
    redis_url: str = "redis://127.0.0.1:6379/0"
    key_prefix: str = "recsys"
    # Item id seen in a sequence but never put: its attributes read as this value.
    unknown_item_value: int = 0


class FeatureConfig(StrictModel):
    """How point-in-time user sequences and attribute joins are defined (offline and online)."""

    max_len: int = Field(default=1000, ge=1, description="L: events kept per sequence (newest L strictly before t)")
    history_actions: list[ActionName] = Field(default_factory=lambda: ["click", "like", "share", "purchase"])
    sequence_fields: list[str] = Field(default_factory=lambda: list(CONTRACT_SEQ_FIELDS))
    item_attributes: list[str] = Field(default_factory=lambda: ["category"])
    user_attributes: list[str] = Field(default_factory=list)
    # Impressions per chunk (and per part file): sets the memory of the offline build, about
    # (writer_threads + 1) * chunk_size * mean sequence length * 25 bytes. PERF-NOTES used ~50k; measured here
    # (benchmarks/bench_features.py, same run) 10k was as fast per CPU-second as 2.5k and faster than 40k, at a
    # third of 40k's memory, so 10k is the default.
    chunk_size: int = Field(default=10_000, ge=1)
    # Users are processed in this many shards (user_id & (shards-1)), one pass over the events each: the sorted
    # history in memory is then ~1/shards of all history events, so memory stays bounded as the data grows.
    user_shards: int = Field(default=1, ge=1)
    compression: Literal["lz4", "zstd", "snappy", "gzip", "none"] = "lz4"
    writer_threads: int = Field(default=2, ge=1, le=16)
    # Items missing from the items table: "error" fails naming the ids; "fill" uses unknown_item_value.
    on_unknown_item: Literal["error", "fill"] = "error"
    unknown_item_value: int = 0
    # Drop an event identical to an earlier one in (user, ts, item, action, domain) (replays are idempotent).
    dedup: bool = True
    progress: bool = True
    online: OnlineConfig = Field(default_factory=OnlineConfig)

    @field_validator("history_actions")
    @classmethod
    def _nonempty_unique(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("must name at least one action")
        if len(set(v)) != len(v):
            raise ValueError(f"duplicate actions in {v}")
        return v

    @model_validator(mode="after")
    def _check_fields(self) -> "FeatureConfig":
        missing = [f for f in CONTRACT_SEQ_FIELDS if f not in self.sequence_fields]
        if missing:
            raise ValueError(f"sequence_fields must include {missing} (the TRAINING contract's seq_* columns)")
        if "category" not in self.item_attributes:
            raise ValueError("item_attributes must include 'category' (the contract's item_category)")
        extra = [f for f in self.sequence_fields if f not in CONTRACT_SEQ_FIELDS and f not in self.item_attributes]
        if extra:
            raise ValueError(f"sequence_fields {extra} are neither event fields {list(EVENT_SEQ_FIELDS)} nor item_attributes")
        for name in ("sequence_fields", "item_attributes", "user_attributes"):
            vals = getattr(self, name)
            if len(set(vals)) != len(vals):
                raise ValueError(f"{name} has duplicates: {vals}")
        if self.user_shards & (self.user_shards - 1):
            raise ValueError(f"user_shards must be a power of two, got {self.user_shards}")
        if self.chunk_size * self.max_len >= 2**31:
            raise ValueError(
                f"chunk_size * max_len = {self.chunk_size * self.max_len} must stay below 2**31 (int32 list offsets)"
            )
        return self

    @property
    def history_codes(self) -> list[int]:
        """The int8 action codes that count as history."""
        return [int(Action[a.upper()]) for a in self.history_actions]

    @property
    def online_max_len(self) -> int:
        return self.online.max_len if self.online.max_len is not None else self.max_len

    @property
    def seq_item_attributes(self) -> list[str]:
        """Item attributes carried along the sequence, contract's category first."""
        return ["category"] + [f for f in self.sequence_fields if f not in CONTRACT_SEQ_FIELDS]


def load_feature_config(path: str | Path | None = None, overrides: list[str] | None = None) -> FeatureConfig:
    """Load feature definitions (default configs/features.yaml), apply `--set` overrides, validate."""
    if path is None and DEFAULT_CONFIG.exists():
        path = DEFAULT_CONFIG
    return load_config(FeatureConfig, path, overrides)
