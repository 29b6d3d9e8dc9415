"""Policy SPECs -> action probabilities over each request's candidate set.

Every policy evaluated by the replay must have defined propensities, so a policy is a SOURCE of per-candidate
scores plus an explicit RULE that turns scores into probabilities. Grammar (`recsys replay --policy-a SPEC`):

    SPEC   := SOURCE [ "@" RULE ]
    SOURCE := "logging"                the logged policy itself (the requests' logging_probs; takes no rule)
            | "uniform"                equal probability on every candidate (takes no rule)
            | "random[:SEED]"          i.i.d. uniform scores per candidate (a floor baseline)
            | "popularity"             log(1 + reward count of the item in the logs) (a baseline; uses the logs)
            | "oracle:truth"           the simulator's true click probabilities (DIR/truth; tests and demos)
            | "scores:PATH"            a parquet file with columns request_id, item_id, score (every candidate scored)
            | "ranker:MODEL_DIR"       an exported ranker (`recsys export`): the user state is encoded once per request
                                       from the point-in-time sequence (events strictly before the request) and every
                                       candidate is scored with score(state, candidates)
    RULE   := "softmax(temperature=T)" pi(a) proportional to exp(score(a) / T)
            | "epsilon_greedy(epsilon=E, k=K)"
                                       the top K candidates by score share 1-E equally; E is spread uniformly over
                                       all candidates (K=1: classic epsilon-greedy; ties broken by candidate order)
            | "greedy"                 = epsilon_greedy(epsilon=0, k=1)
A SOURCE without a RULE uses the replay config's `default_rule`. Examples: `ranker:runs/longer/export@softmax(temperature=0.5)`,
`scores:preds.parquet@epsilon_greedy(epsilon=0.1, k=1)`, `oracle:truth@greedy`.

Everything is vectorised over the flat (CSR) candidate layout of `Candidates` (see recsys.evaluation.ope).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from recsys.data.io import DataError
from recsys.evaluation.ope import segment_sum


class PolicySpecError(DataError):
    """A SPEC that does not parse or cannot be evaluated on these logs."""


@dataclass
class Candidates:
    """The requests of the logs and their candidate sets, flat (CSR), plus what policies may use."""

    request_id: np.ndarray  # (R,) int64, sorted ascending
    user_id: np.ndarray  # (R,)
    domain: np.ndarray  # (R,)
    ts: np.ndarray  # (R,) int64 ms
    offsets: np.ndarray  # (R+1,)
    item_id: np.ndarray  # (F,) candidate items, flat
    logging_probs: np.ndarray  # (F,)
    logs_dir: Path | None = None
    true_ctr: np.ndarray | None = None  # (F,) from DIR/truth when present
    logged_item: np.ndarray | None = None  # (n,) logged actions (for popularity)
    logged_reward: np.ndarray | None = None  # (n,)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def n_requests(self) -> int:
        return int(self.request_id.size)

    def candidate_request(self) -> np.ndarray:
        return np.repeat(np.arange(self.n_requests, dtype=np.int64), np.diff(self.offsets))

    def flat_index(self, request_id: np.ndarray, item_id: np.ndarray) -> np.ndarray:
        """Flat candidate index of each (request_id, item_id) pair; -1 where the pair is not a candidate."""
        request_id = np.asarray(request_id, dtype=np.int64)
        item_id = np.asarray(item_id, dtype=np.int64)
        out = np.full(request_id.size, -1, dtype=np.int64)
        if self.n_requests == 0:
            return out
        ridx = np.minimum(np.searchsorted(self.request_id, request_id), self.n_requests - 1)
        items = np.unique(self.item_id)
        if items.size == 0:
            return out
        icode = np.minimum(np.searchsorted(items, item_id), items.size - 1)
        known = (self.request_id[ridx] == request_id) & (items[icode] == item_id)
        # one int64 key per (request index, dense item code): sort the candidates' keys once, search the queries
        U = np.int64(items.size)
        cand_key = self.candidate_request() * U + np.searchsorted(items, self.item_id)
        order = np.argsort(cand_key, kind="stable")
        sorted_key = cand_key[order]
        q = ridx[known] * U + icode[known]
        pos = np.minimum(np.searchsorted(sorted_key, q), sorted_key.size - 1)
        hit = sorted_key[pos] == q
        res = np.full(q.size, -1, dtype=np.int64)
        res[hit] = order[pos[hit]]
        out[np.flatnonzero(known)] = res
        return out


# ----------------------------------------------------------------------------------------------- rules


@dataclass(frozen=True)
class Rule:
    kind: str  # softmax | epsilon_greedy
    temperature: float = 1.0
    epsilon: float = 0.0
    k: int = 1

    def __str__(self) -> str:
        if self.kind == "softmax":
            return f"softmax(temperature={self.temperature:g})"
        return f"epsilon_greedy(epsilon={self.epsilon:g}, k={self.k})"


_RULE_RE = re.compile(r"^\s*(softmax|epsilon_greedy|greedy)\s*(?:\((.*)\))?\s*$")


def parse_rule(text: str) -> Rule:
    m = _RULE_RE.match(text)
    if not m:
        raise PolicySpecError(f"rule {text!r}: expected softmax(temperature=T), epsilon_greedy(epsilon=E, k=K) or greedy")
    kind, args = m.group(1), (m.group(2) or "").strip()
    kw: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in args.split(","))):
        if "=" not in part:
            raise PolicySpecError(f"rule {text!r}: argument {part!r} must look like name=value")
        k, v = (s.strip() for s in part.split("=", 1))
        kw[k] = v
    try:
        if kind == "greedy":
            if kw:
                raise PolicySpecError(f"rule {text!r}: greedy takes no arguments")
            return Rule("epsilon_greedy", epsilon=0.0, k=1)
        if kind == "softmax":
            unknown = set(kw) - {"temperature"}
            if unknown:
                raise PolicySpecError(f"rule {text!r}: unknown argument(s) {sorted(unknown)} (softmax takes temperature)")
            t = float(kw.get("temperature", 1.0))
            if not t > 0:
                raise PolicySpecError(f"rule {text!r}: temperature must be > 0")
            return Rule("softmax", temperature=t)
        unknown = set(kw) - {"epsilon", "k"}
        if unknown:
            raise PolicySpecError(f"rule {text!r}: unknown argument(s) {sorted(unknown)} (epsilon_greedy takes epsilon, k)")
        e = float(kw.get("epsilon", 0.1))
        k = int(kw.get("k", 1))
        if not 0.0 <= e <= 1.0 or k < 1:
            raise PolicySpecError(f"rule {text!r}: need 0 <= epsilon <= 1 and k >= 1")
        return Rule("epsilon_greedy", epsilon=e, k=k)
    except ValueError as err:
        raise PolicySpecError(f"rule {text!r}: {err}") from None


def apply_rule(rule: Rule, scores: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Per-request probabilities (flat) from flat scores under `rule`."""
    scores = np.asarray(scores, dtype=np.float64)
    sizes = np.diff(offsets)
    R = sizes.size
    cand_req = np.repeat(np.arange(R, dtype=np.int64), sizes)
    if scores.size == 0:
        return scores.copy()
    if not np.all(np.isfinite(scores)):
        raise PolicySpecError(f"{int(np.count_nonzero(~np.isfinite(scores)))} candidate scores are not finite")
    if rule.kind == "softmax":
        ne = sizes > 0
        mx = np.zeros(R)
        mx[ne] = np.maximum.reduceat(scores, offsets[:-1][ne])
        e = np.exp((scores - mx[cand_req]) / rule.temperature)
        return e / segment_sum(e, offsets)[cand_req]
    order = np.lexsort((np.arange(scores.size), -scores, cand_req))
    rank = np.empty(scores.size, dtype=np.int64)
    rank[order] = np.arange(scores.size) - offsets[:-1][cand_req[order]]
    k_eff = np.minimum(rule.k, sizes)[cand_req]
    with np.errstate(invalid="ignore", divide="ignore"):
        p = np.where(rank < rule.k, (1.0 - rule.epsilon) / k_eff, 0.0) + rule.epsilon / sizes[cand_req]
    return p


# ----------------------------------------------------------------------------------------------- sources


@dataclass
class Policy:
    """A target policy evaluated on a set of candidates."""

    spec: str
    probs: np.ndarray  # (F,) per-candidate probabilities, each request's sum = 1
    scores: np.ndarray  # (F,) ranking scores (for ranking metrics)
    ctr: np.ndarray | None = None  # (F,) a calibrated click probability when the source has one (logloss)
    rule: str | None = None

    @property
    def name(self) -> str:
        return self.spec


def split_spec(spec: str) -> tuple[str, str | None]:
    spec = spec.strip()
    if "@" in spec:
        src, rule = spec.rsplit("@", 1)
        if _RULE_RE.match(rule):
            return src.strip(), rule.strip()
    return spec, None


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _scores_from_file(path: Path, cands: Candidates) -> np.ndarray:
    import pyarrow.parquet as pq

    if not path.exists():
        raise PolicySpecError(f"scores file not found: {path}")
    try:
        t = pq.read_table(path)
    except Exception as e:  # pyarrow raises several types for unreadable files
        raise PolicySpecError(f"{path}: not a readable parquet file ({e})") from None
    for col in ("request_id", "item_id", "score"):
        if col not in t.column_names:
            raise PolicySpecError(f"{path}: missing column '{col}' (expected request_id, item_id, score)")
    for col in ("request_id", "item_id", "score"):
        if t[col].null_count:
            raise PolicySpecError(f"{path}: column '{col}' has {t[col].null_count} nulls")
    rid = t["request_id"].to_numpy().astype(np.int64)
    iid = t["item_id"].to_numpy().astype(np.int64)
    sc = t["score"].to_numpy().astype(np.float64)
    idx = cands.flat_index(rid, iid)
    scores = np.full(cands.item_id.size, np.nan)
    ok = idx >= 0
    scores[idx[ok]] = sc[ok]
    missing = int(np.count_nonzero(np.isnan(scores)))
    if missing:
        raise PolicySpecError(
            f"{path}: {missing} of {scores.size} (request_id, item_id) candidates of the logs have no score "
            "(every candidate of every request must be scored)"
        )
    return scores


def _popularity(cands: Candidates) -> np.ndarray:
    if cands.logged_item is None:
        raise PolicySpecError("popularity needs the logged impressions")
    reward = cands.logged_reward if cands.logged_reward is not None else np.ones(cands.logged_item.size)
    items, inv = np.unique(cands.logged_item, return_inverse=True)
    cnt = np.bincount(inv.reshape(-1), weights=reward, minlength=items.size)
    if items.size == 0:
        return np.zeros(cands.item_id.size)
    pos = np.minimum(np.searchsorted(items, cands.item_id), items.size - 1)
    return np.log1p(np.where(items[pos] == cands.item_id, cnt[pos], 0.0))


def _ranker_scores(model_dir: Path, cands: Candidates, batch_requests: int = 256) -> np.ndarray:
    """Logits of an exported ranker for every candidate: encode_user once per request, then score all candidates."""
    import torch

    try:
        from recsys.training.export import load_exported
    except ImportError as e:
        raise PolicySpecError(f"ranker:{model_dir}: the export loader recsys.training.export.load_exported is not available ({e})") from None
    if cands.logs_dir is None:
        raise PolicySpecError("ranker policies need the logs directory (events + items) for point-in-time sequences")
    import pyarrow as pa

    from feature_store.definitions import load_feature_config
    from feature_store.history import ItemAttributes
    from feature_store.offline import load_history, read_attributes
    from recsys.data.batch import BatchSpec, Candidates as CandTensor, build_batch
    from recsys.data.schemas import TRAINING, TS

    loaded = load_exported(model_dir)  # ExportedModel(model, spec, info)
    model, spec = (loaded.model, loaded.spec) if hasattr(loaded, "spec") else (loaded, BatchSpec())
    if "ranker_history" not in cands.extra:  # sorted once, shared by both policies of a replay
        fcfg = load_feature_config(None)
        item_ids, item_vals = read_attributes(cands.logs_dir, "items", "item_id", fcfg.item_attributes)
        items = ItemAttributes(item_ids, item_vals)
        cands.extra["ranker_history"] = (items, load_history(cands.logs_dir, fcfg, items))
    items, hist = cands.extra["ranker_history"]
    cat_flat = items.lookup("category", cands.item_id, "fill", 0, source="requests (candidates)")
    model.eval()
    out = np.empty(cands.item_id.size, dtype=np.float64)
    sizes = np.diff(cands.offsets)
    with torch.no_grad():
        from tqdm import tqdm

        bar = tqdm(total=cands.n_requests, desc=f"scoring {Path(model_dir).name}", unit="req", mininterval=2.0)
        for lo in range(0, cands.n_requests, batch_requests):
            hi = min(cands.n_requests, lo + batch_requests)
            user, ts = cands.user_id[lo:hi], cands.ts[lo:hi]
            seqs = hist.sequences(user, ts, spec.max_len)
            first = cands.offsets[lo:hi]
            cols = {
                "request_id": pa.array(cands.request_id[lo:hi]),
                "ts": pa.array(ts, type=pa.int64()).cast(TS),
                "user_id": pa.array(user, type=pa.int64()),
                "item_id": pa.array(cands.item_id[np.minimum(first, cands.item_id.size - 1)], type=pa.int64()),
                "domain": pa.array(cands.domain[lo:hi], type=pa.int32()),
                "item_category": pa.array(cat_flat[np.minimum(first, cands.item_id.size - 1)], type=pa.int64()),
                "label": pa.array(np.zeros(hi - lo, np.int8)),
            }
            cols.update(seqs.to_arrow())
            rows = pa.table({k: v for k, v in cols.items() if k in TRAINING.names or k.startswith("seq_")})
            batch = build_batch(rows, spec)
            state = model.encode_user(batch)
            C = int(sizes[lo:hi].max(initial=1))
            pad_i = np.zeros((hi - lo, C), np.int64)
            pad_c = np.zeros((hi - lo, C), np.int64)
            mask = np.arange(C)[None, :] < sizes[lo:hi, None]
            sel = np.flatnonzero(mask.reshape(-1))
            flat = np.arange(cands.offsets[lo], cands.offsets[hi])
            pad_i.reshape(-1)[sel] = cands.item_id[flat] % spec.size("item_id")
            pad_c.reshape(-1)[sel] = cat_flat[flat] % spec.size("item_category")
            logits = model.score(state, CandTensor(torch.from_numpy(pad_i), torch.from_numpy(pad_c)))
            out[flat] = logits.detach().cpu().double().numpy().reshape(-1)[sel]
            bar.update(hi - lo)
        bar.close()
    return out


def make_policy(spec: str, cands: Candidates, default_rule: str = "softmax(temperature=1.0)") -> Policy:
    """Evaluate a SPEC (grammar in the module docstring) on the logs' candidates."""
    src, rule_text = split_spec(spec)
    kind, _, arg = src.partition(":")
    kind = kind.strip().lower()
    if kind in ("logging", "uniform"):
        if rule_text is not None:
            raise PolicySpecError(f"policy {spec!r}: '{kind}' has fixed probabilities and takes no rule")
        if arg:
            raise PolicySpecError(f"policy {spec!r}: '{kind}' takes no argument")
        if kind == "logging":
            p = np.asarray(cands.logging_probs, dtype=np.float64)
            return Policy(spec, p, p.copy(), None, None)
        sizes = np.diff(cands.offsets)
        p = 1.0 / np.repeat(sizes, sizes).astype(np.float64)
        return Policy(spec, p, np.zeros_like(p), None, None)
    ctr = None
    if kind == "random":
        seed = int(arg) if arg else 0
        scores = np.random.default_rng(seed).random(cands.item_id.size)
    elif kind == "popularity":
        scores = _popularity(cands)
    elif kind == "oracle":
        if arg != "truth":
            raise PolicySpecError(f"policy {spec!r}: the only oracle is 'oracle:truth'")
        if cands.true_ctr is None:
            raise PolicySpecError(f"policy {spec!r}: the logs have no ground truth (DIR/truth/request_ctr from the simulator)")
        scores = np.asarray(cands.true_ctr, dtype=np.float64)
        ctr = scores
    elif kind == "scores":
        if not arg:
            raise PolicySpecError(f"policy {spec!r}: expected scores:PATH")
        scores = _scores_from_file(Path(arg), cands)
        if np.all((scores >= 0) & (scores <= 1)):
            ctr = scores
    elif kind == "ranker":
        if not arg:
            raise PolicySpecError(f"policy {spec!r}: expected ranker:MODEL_DIR")
        if not Path(arg).exists():
            raise PolicySpecError(f"policy {spec!r}: model directory {arg} not found")
        scores = _ranker_scores(Path(arg), cands)
        ctr = _sigmoid(scores)
    else:
        raise PolicySpecError(
            f"policy {spec!r}: unknown source '{kind}' (expected logging, uniform, random[:SEED], popularity, "
            "oracle:truth, scores:PATH or ranker:MODEL_DIR)"
        )
    rule = parse_rule(rule_text if rule_text is not None else default_rule)
    probs = apply_rule(rule, scores, cands.offsets)
    return Policy(spec, probs, scores, ctr, str(rule))
