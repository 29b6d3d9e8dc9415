"""The parquet data contract (DESIGN.md) as pyarrow schemas.

Tables and their on-disk layout under a data directory DIR:
  DIR/events/dt=YYYY-MM-DD/*.parquet     behaviour events incl. impressions (one row per shown item)
  DIR/requests/dt=YYYY-MM-DD/*.parquet   one row per served request: the candidate set the logging policy chose
                                         from and its action probabilities (needed to evaluate other policies)
  DIR/items/*.parquet, DIR/users/*.parquet
  DIR/training/*.parquet                 the point-in-time training table built by feature_store.offline

Off-policy model: every impression row is one bandit round. Its context is (user, domain, ts, position); its action
is `item_id`, drawn from the request's `candidate_item_ids` with probability `propensity` (= the logging policy's
probability of that item at that position); its reward is `label`.
"""
from __future__ import annotations

import enum

import pyarrow as pa

TS = pa.timestamp("ms", tz="UTC")


class Action(enum.IntEnum):
    IMPRESSION = 0
    CLICK = 1
    LIKE = 2
    SHARE = 3
    PURCHASE = 4


EVENTS = pa.schema(
    [
        pa.field("ts", TS, nullable=False),
        pa.field("user_id", pa.int64(), nullable=False),
        pa.field("item_id", pa.int64(), nullable=False),
        pa.field("domain", pa.int32(), nullable=False),
        pa.field("action", pa.int8(), nullable=False),
        # impression-only fields (null for other actions)
        pa.field("request_id", pa.int64()),
        pa.field("position", pa.int32()),
        pa.field("label", pa.int8()),
        pa.field("policy", pa.string()),
        pa.field("propensity", pa.float32()),
    ]
)

REQUESTS = pa.schema(
    [
        pa.field("request_id", pa.int64(), nullable=False),
        pa.field("ts", TS, nullable=False),
        pa.field("user_id", pa.int64(), nullable=False),
        pa.field("domain", pa.int32(), nullable=False),
        pa.field("policy", pa.string(), nullable=False),
        pa.field("candidate_item_ids", pa.list_(pa.int64()), nullable=False),
        pa.field("logging_probs", pa.list_(pa.float32()), nullable=False),
    ]
)

ITEMS = pa.schema(
    [
        pa.field("item_id", pa.int64(), nullable=False),
        pa.field("domain", pa.int32(), nullable=False),
        pa.field("category", pa.int64(), nullable=False),
        pa.field("created_ts", TS, nullable=False),
    ]
)

USERS = pa.schema(
    [
        pa.field("user_id", pa.int64(), nullable=False),
    ]
)

# Point-in-time training table: one row per impression; seq_* hold the user's last L events strictly before ts,
# oldest first (most recent last). seq_time_gap = (ts - event ts) in seconds.
TRAINING = pa.schema(
    [
        pa.field("request_id", pa.int64()),
        pa.field("ts", TS, nullable=False),
        pa.field("user_id", pa.int64(), nullable=False),
        pa.field("item_id", pa.int64(), nullable=False),
        pa.field("domain", pa.int32(), nullable=False),
        pa.field("item_category", pa.int64(), nullable=False),
        pa.field("position", pa.int32()),
        pa.field("label", pa.int8(), nullable=False),
        pa.field("policy", pa.string()),
        pa.field("propensity", pa.float32()),
        pa.field("seq_item_id", pa.list_(pa.int64()), nullable=False),
        pa.field("seq_category", pa.list_(pa.int64()), nullable=False),
        pa.field("seq_action", pa.list_(pa.int8()), nullable=False),
        pa.field("seq_domain", pa.list_(pa.int32()), nullable=False),
        pa.field("seq_time_gap", pa.list_(pa.float32()), nullable=False),
    ]
)

TABLES: dict[str, pa.Schema] = {
    "events": EVENTS,
    "requests": REQUESTS,
    "items": ITEMS,
    "users": USERS,
    "training": TRAINING,
}
# Tables stored as dt=YYYY-MM-DD partitions.
PARTITIONED = {"events", "requests"}
