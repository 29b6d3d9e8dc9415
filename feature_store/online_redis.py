"""Redis online store: the same semantics as the embedded store, on a real redis-server via redis-py pipelines.

Layout (prefix = online.key_prefix):
- `<prefix>:seq:<user>`  sorted set, score = ts (ms; exact in a double below 2**53), member = 21 bytes:
  big-endian ts (8), item_id (8), action (1), domain (4), each with its sign bit flipped so that byte order equals
  numeric order. Members with equal scores sort by bytes, i.e. by (item_id, action, domain): exactly the canonical
  order of feature_store.history, and an exact duplicate is the same member, so ZADD drops it by itself.
- `<prefix>:item:<attr>` hash: field = the member's 8 item_id bytes, value = the attribute as big-endian int64.
An append is one MULTI/EXEC pipeline (one round trip, atomic for the whole batch): per user ZADD of its events and
ZREMRANGEBYRANK to keep the newest L. A get is one pipeline of a small Lua script per user that takes the newest L
members with score < request_ts (ZREVRANGEBYSCORE ... LIMIT), looks their item attributes up with one HMGET per
attribute (attributes are read at get time, like the offline join), and returns members and attribute values
concatenated into one bulk string, decoded with numpy without per-event Python. (The script touches the user's key
and the item hashes: fine on one server; on Redis Cluster they would need a common hash tag.)
Durability is the server's: acknowledged events survive a server crash only with appendonly yes +
appendfsync always; the connection URL picks the server.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from feature_store.definitions import FeatureConfig
from feature_store.history import Sequences
from feature_store.online import (EVENT_DTYPE, OnlineStore, StoreError, assemble, request_times, validate_events,
                                  validate_items)

MEMBER = np.dtype([("ts", ">u8"), ("item_id", ">u8"), ("action", "u1"), ("domain", ">u4")])
_FLIP = {"ts": np.uint64(1 << 63), "item_id": np.uint64(1 << 63), "action": np.uint8(1 << 7), "domain": np.uint32(1 << 31)}
_UNSIGNED = {"ts": np.uint64, "item_id": np.uint64, "action": np.uint8, "domain": np.uint32}

GET_LUA = """
local m = redis.call('ZREVRANGEBYSCORE', KEYS[1], '(' .. ARGV[1], '-inf', 'LIMIT', 0, tonumber(ARGV[2]))
local n = #m
if n == 0 or #KEYS == 1 then return table.concat(m) end
local ids = {}
for i = 1, n do ids[i] = string.sub(m[i], 9, 16) end
local vals = {}
for a = 2, #KEYS do
  local v = {}
  for s = 1, n, 1000 do  -- unpack() has a small stack limit: look up at most 1000 ids per HMGET
    local part = redis.call('HMGET', KEYS[a], unpack(ids, s, math.min(s + 999, n)))
    for j = 1, #part do v[s + j - 1] = part[j] end
  end
  vals[a] = v
end
local out = {}
for i = 1, n do
  out[#out + 1] = m[i]
  for a = 2, #KEYS do out[#out + 1] = vals[a][i] or ARGV[3] end
end
return table.concat(out)
"""


def _flip_ids(ids: np.ndarray) -> list[bytes]:
    """Item ids as the 8 bytes they have inside a member (hash field names)."""
    b = (np.asarray(ids, dtype=np.int64).view(np.uint64) ^ np.uint64(1 << 63)).astype(">u8").tobytes()
    return [b[i * 8:(i + 1) * 8] for i in range(len(ids))]


def encode(rows: np.ndarray) -> bytes:
    """EVENT_DTYPE rows -> concatenated members (order-preserving bytes)."""
    m = np.empty(len(rows), MEMBER)
    for f in MEMBER.names:
        m[f] = rows[f].astype(_UNSIGNED[f].__name__.replace("uint", "int")).view(_UNSIGNED[f]) ^ _FLIP[f]
    return m.tobytes()


def decode(blob: bytes | np.ndarray) -> np.ndarray:
    """Members (bytes, or a structured array with MEMBER's fields) -> EVENT_DTYPE rows."""
    m = np.frombuffer(blob, dtype=MEMBER) if isinstance(blob, bytes) else blob
    rec = np.empty(len(m), EVENT_DTYPE)
    for f in MEMBER.names:
        u = (m[f] ^ _FLIP[f]).astype(_UNSIGNED[f])
        rec[f] = u.view(_UNSIGNED[f].__name__.replace("uint", "int"))
    return rec


class RedisOnlineStore(OnlineStore):
    def __init__(self, cfg: FeatureConfig, url: str | None = None, prefix: str | None = None):
        import redis

        super().__init__(cfg)
        self.url = url or cfg.online.redis_url
        self.prefix = prefix or cfg.online.key_prefix
        self._redis_errors = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)
        try:
            self.r = redis.Redis.from_url(self.url)
            self.r.ping()
            self._get_sha = self.r.script_load(GET_LUA)
        except self._redis_errors as e:
            raise StoreError(f"redis at {self.url} is not reachable: {e}") from None

    def _seq_key(self, user: int) -> str:
        return f"{self.prefix}:seq:{user}"

    def _item_key(self, attr: str) -> str:
        return f"{self.prefix}:item:{attr}"

    def append(self, events: Any) -> int:
        batch = validate_events(events, self.history_codes)
        if len(batch) == 0:
            return 0
        calls = []
        w = MEMBER.itemsize
        for user, rows in batch.by_user():
            raw = encode(rows)
            mapping = {raw[i * w:(i + 1) * w]: t for i, t in enumerate(rows["ts"].tolist())}
            calls.append((self._seq_key(user), mapping))

        def build(pipe):
            for key, mapping in calls:
                pipe.zadd(key, mapping)
                pipe.zremrangebyrank(key, 0, -(self.max_len + 1))

        return int(sum(self._run(build, transaction=True)[0::2]))

    def _run(self, build, transaction: bool = False) -> list:
        """Run the commands `build(pipe)` queues in one round trip; reload the scripts once if the server lost them."""
        import redis

        for attempt in (0, 1):
            pipe = self.r.pipeline(transaction=transaction)
            build(pipe)
            try:
                return pipe.execute()
            except redis.exceptions.NoScriptError:  # server restarted or SCRIPT FLUSH: load the script again
                if attempt:
                    raise
                self.r.script_load(GET_LUA)
            except self._redis_errors as e:
                raise StoreError(f"redis at {self.url}: {e}") from None
        raise AssertionError("unreachable")

    def get_sequences(self, user_ids: Any, request_ts: Any) -> Sequences:
        users, cutoff = request_times(user_ids, request_ts)
        attr_keys = [self._item_key(a) for a in self.seq_attributes]
        default = np.array([self.unknown_item_value], dtype=">i8").tobytes()

        def build(pipe):
            for u, t in zip(users.tolist(), cutoff.tolist()):
                pipe.evalsha(self._get_sha, 1 + len(attr_keys), self._seq_key(u), *attr_keys, t, self.max_len, default)

        blobs = self._run(build)
        row = np.dtype(MEMBER.descr + [(f"a{i}", ">i8") for i in range(len(attr_keys))])
        recs = [np.frombuffer(b, dtype=row)[::-1] for b in blobs]  # newest first on the wire
        parts = [decode(r) for r in recs]
        flat = np.concatenate(recs) if recs else np.empty(0, row)
        attrs = {a: flat[f"a{i}"].astype(np.int64) for i, a in enumerate(self.seq_attributes)}
        return assemble(parts, cutoff, attrs)

    def _lookup(self, ids: np.ndarray, attributes: list[str]) -> tuple[dict[str, np.ndarray], np.ndarray]:
        if len(ids) == 0:
            return {a: np.empty(0, np.int64) for a in attributes}, np.empty(0, bool)
        fields = _flip_ids(ids)
        res = self._run(lambda pipe: [pipe.hmget(self._item_key(a), fields) for a in attributes])
        out, found = {}, np.ones(len(ids), bool)
        for a, vals in zip(attributes, res):
            f = np.array([v is not None for v in vals], dtype=bool)
            raw = b"".join(v if v is not None else b"\0" * 8 for v in vals)
            v = np.frombuffer(raw, dtype=">i8").astype(np.int64)
            v[~f] = self.unknown_item_value
            out[a] = v
            found &= f
        return out, found

    def put_items(self, items: Any) -> int:
        ids, attrs = validate_items(items, self.item_attributes)
        step = 10_000

        def build(pipe):
            for s in range(0, len(ids), step):
                keys = _flip_ids(ids[s:s + step])
                for a in self.item_attributes:
                    vals = attrs[a][s:s + step].astype(">i8").tobytes()
                    pipe.hset(self._item_key(a), mapping={k: vals[i * 8:(i + 1) * 8] for i, k in enumerate(keys)})

        if len(ids):
            self._run(build)
        return len(ids)

    def get_items(self, item_ids: Any) -> tuple[dict[str, np.ndarray], np.ndarray]:
        return self._lookup(np.asarray(item_ids, dtype=np.int64), self.item_attributes)

    def close(self) -> None:
        try:
            self.r.close()
        except Exception:  # closing a dead connection is not an error worth raising
            pass
