"""Offline A/B replay: off-policy estimates of two policies on the same logged impressions, with intervals.

`recsys replay --logs DIR --policy-a SPEC --policy-b SPEC --out REPORT_DIR` (SPEC grammar:
recsys.evaluation.policy). Steps:
1. Read the impressions (events with action == IMPRESSION) and the requests of DIR, validating what the estimators
   rely on: every impression has a propensity in (0, 1], a reward, a known request, and its item among the request's
   candidates (each failure is a DataError naming file, column and row count).
2. Turn both SPECs into probabilities over every request's candidates; fit the reward model (DM/DR/SNDR/Switch-DR).
3. Per scope (all rounds, then each domain): every configured estimator for A and B, bootstrap intervals with A and
   B on the SAME resamples, the paired difference A - B with its interval and p-value, diagnostics (ESS, tiny
   propensities, support), and the ground-truth value when DIR/truth exists (simulator data).
4. Ranking-metric replay on the same impressions: AUC, GAUC, logloss (when the policy has calibrated CTRs), HR@K,
   NDCG@K and MRR per policy and scope, with bootstrap intervals.
5. Print a summary table; write report.html (self-contained), report.md and report.json to REPORT_DIR.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Literal, Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import Field, field_validator

from recsys.config import CONFIG_DIR, StrictModel, load_config
from recsys.data.io import DataError, check_schema, list_files, read_table
from recsys.data.schemas import EVENTS, Action
from recsys.evaluation import metrics as M
from recsys.evaluation.bootstrap import bootstrap, paired_difference
from recsys.evaluation.diagnostics import diagnose
from recsys.evaluation.ope import ESTIMATORS, BanditRounds, Estimate, estimate_all, fit_item_reward_model, true_value
from recsys.evaluation.policy import Candidates, make_policy, parse_rule

EstimatorName = Literal["replay", "ips", "snips", "dm", "dr", "sndr", "switch_dr"]


class ReplayConfig(StrictModel):
    """Knobs of the replay (defaults in configs/replay.yaml)."""

    reward: str = "label"  # events column used as the reward (numeric; `label` = click)
    estimators: list[EstimatorName] = Field(default_factory=lambda: list(ESTIMATORS))
    clip: Optional[float] = Field(None, gt=0)  # max importance weight (None: no clipping)
    switch_tau: float = Field(10.0, gt=0)  # Switch-DR: importance-weighted correction only where w <= tau
    n_bootstrap: int = Field(1000, ge=10)
    alpha: float = Field(0.05, gt=0, lt=1)  # (1 - alpha) intervals
    seed: int = 0
    workers: int = Field(2, ge=1)  # bootstrap worker threads (results do not depend on it)
    k: int = Field(10, ge=1)  # K of HR@K / NDCG@K
    default_rule: str = "softmax(temperature=1.0)"  # probability rule for SPECs without '@RULE'
    reward_model: Literal["item_mean", "truth"] = "item_mean"
    reward_model_shrinkage: float = Field(20.0, ge=0)
    reward_model_folds: int = Field(2, ge=1)
    replay_mode: Literal["sample", "argmax"] = "sample"
    per_domain: bool = True
    ranking_metrics: bool = True
    min_propensity: float = Field(1e-3, gt=0)  # diagnostics: warn below this logging propensity
    propensity_tolerance: float = Field(1e-3, ge=0)  # warn when propensity != the request's logging_probs entry
    headline: EstimatorName = "dr"  # estimator used for the per-domain plot

    @field_validator("default_rule")
    @classmethod
    def _rule_parses(cls, v: str) -> str:
        parse_rule(v)
        return v

    @field_validator("estimators")
    @classmethod
    def _nonempty(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("at least one estimator")
        return list(dict.fromkeys(v))


# ------------------------------------------------------------------------------------------------ loading


class ReplayData:
    """Validated logged rounds + the candidates every policy is evaluated on."""

    def __init__(self, cands: Candidates, rounds: BanditRounds, domain: np.ndarray, user: np.ndarray,
                 request_id: np.ndarray, warnings: list[str]):
        self.cands = cands
        self.rounds = rounds
        self.domain = domain
        self.user = user
        self.request_id = request_id
        self.warnings = warnings


def _read_impressions(logs: Path, reward: str) -> tuple[dict[str, np.ndarray], np.ndarray, list[Path]]:
    """Impression columns from every events file (validated per file) + the file index of each row."""
    cols = ["ts", "user_id", "item_id", "domain", "action", "request_id", "propensity"]
    contract_reward = reward in EVENTS.names
    parts: dict[str, list[np.ndarray]] = {c: [] for c in cols + ["reward"]}
    file_idx, files = [], list_files(logs, "events")
    imp_code = pa.scalar(int(Action.IMPRESSION), pa.int8())
    for fi, f in enumerate(files):
        pf = pq.ParquetFile(f)
        check_schema(pf.schema_arrow, EVENTS, str(f), cols + ([reward] if contract_reward else []))
        if not contract_reward:
            j = pf.schema_arrow.get_field_index(reward)
            if j < 0:
                raise DataError(f"{f}: missing reward column '{reward}' (config `reward`)")
            t_ = pf.schema_arrow.field(j).type
            if not (pa.types.is_integer(t_) or pa.types.is_floating(t_) or pa.types.is_boolean(t_)):
                raise DataError(f"{f}: reward column '{reward}' has type {t_}, expected a numeric type")
        t = pf.read(columns=list(dict.fromkeys(cols + [reward])))
        t = t.filter(pc.equal(t["action"], imp_code))
        n = t.num_rows
        if n == 0:
            continue
        for c, what in (("request_id", "request_id"), ("propensity", "propensity"), (reward, f"reward ('{reward}')")):
            nulls = t[c].null_count
            if nulls:
                raise DataError(f"{f}: column '{c}' is null in {nulls} of {n} impression rows (action=IMPRESSION): every impression needs a {what}")
        prop = t["propensity"].to_numpy().astype(np.float64)
        bad = ~((prop > 0) & (prop <= 1))
        if bad.any():
            ex = prop[bad][:3].tolist()
            raise DataError(f"{f}: column 'propensity' is outside (0, 1] in {int(bad.sum())} of {n} impression rows (e.g. {ex})")
        for c in cols:
            if c == "ts":
                parts[c].append(t[c].cast(pa.int64()).to_numpy())
            elif c != "action":
                parts[c].append(t[c].to_numpy())
        r = t[reward].to_numpy(zero_copy_only=False).astype(np.float64)
        if not np.all(np.isfinite(r)):
            raise DataError(f"{f}: reward column '{reward}' has {int((~np.isfinite(r)).sum())} non-finite values")
        parts["reward"].append(r)
        file_idx.append(np.full(n, fi, dtype=np.int32))
    if not file_idx:
        raise DataError(f"{logs}/events: no impression rows (action=IMPRESSION) to replay")
    out = {c: np.concatenate(v) for c, v in parts.items() if c != "action" and v}
    return out, np.concatenate(file_idx), files


def _read_requests(logs: Path) -> Candidates:
    t = read_table(logs, "requests", columns=["request_id", "ts", "user_id", "domain", "candidate_item_ids", "logging_probs"])
    src = f"{logs}/requests"
    rid = t["request_id"].to_numpy()
    order = np.argsort(rid, kind="stable")
    rid = rid[order]
    if rid.size > 1 and np.any(rid[1:] == rid[:-1]):
        dup = np.unique(rid[1:][rid[1:] == rid[:-1]])
        raise DataError(f"{src}: column 'request_id' has {dup.size} duplicated values (e.g. {dup[:3].tolist()})")
    t = t.take(pa.array(order))
    cand = t["candidate_item_ids"].combine_chunks()
    lp = t["logging_probs"].combine_chunks()
    c_off = cand.offsets.to_numpy().astype(np.int64)
    l_off = lp.offsets.to_numpy().astype(np.int64)
    c_off, l_off = c_off - c_off[0], l_off - l_off[0]
    if not np.array_equal(np.diff(c_off), np.diff(l_off)):
        bad = int(np.count_nonzero(np.diff(c_off) != np.diff(l_off)))
        raise DataError(f"{src}: 'logging_probs' and 'candidate_item_ids' differ in length in {bad} rows")
    items = cand.flatten().to_numpy().astype(np.int64)
    probs = lp.flatten().to_numpy(zero_copy_only=False).astype(np.float64)
    if np.any(~np.isfinite(probs) | (probs < 0) | (probs > 1)):
        raise DataError(f"{src}: column 'logging_probs' has {int(np.count_nonzero(~((probs >= 0) & (probs <= 1))))} values outside [0, 1]")
    return Candidates(
        request_id=rid.astype(np.int64),
        user_id=t["user_id"].to_numpy().astype(np.int64),
        domain=t["domain"].to_numpy().astype(np.int64),
        ts=t["ts"].cast(pa.int64()).to_numpy(),
        offsets=c_off,
        item_id=items,
        logging_probs=probs,
        logs_dir=logs,
    )


def _read_truth(logs: Path, cands: Candidates) -> np.ndarray | None:
    p = logs / "truth" / "request_ctr"
    if not p.exists():
        return None
    t = pa.concat_tables([pq.read_table(f) for f in sorted(p.rglob("*.parquet"))])
    rid = t["request_id"].to_numpy().astype(np.int64)
    ctr = t["true_ctr"].combine_chunks()
    off = ctr.offsets.to_numpy().astype(np.int64)
    vals = ctr.flatten().to_numpy(zero_copy_only=False).astype(np.float64)
    order = np.argsort(rid, kind="stable")
    pos = np.minimum(np.searchsorted(rid[order], cands.request_id), rid.size - 1)
    found = rid[order][pos] == cands.request_id
    if not found.all():
        raise DataError(f"{p}: {int((~found).sum())} requests have no true_ctr row")
    row = order[pos]
    lens = off[row + 1] - off[row]
    if not np.array_equal(lens, np.diff(cands.offsets)):
        raise DataError(f"{p}: true_ctr lists are not aligned with the requests' candidate_item_ids")
    starts = np.repeat(off[row], lens)
    within = np.arange(int(lens.sum())) - np.repeat(np.cumsum(lens) - lens, lens)
    return vals[starts + within]


def load_replay_data(logs: str | Path, cfg: ReplayConfig) -> ReplayData:
    logs = Path(logs)
    imp, file_idx, files = _read_impressions(logs, cfg.reward)
    cands = _read_requests(logs)
    warnings: list[str] = []
    flat = cands.flat_index(imp["request_id"], imp["item_id"])
    ridx = np.minimum(np.searchsorted(cands.request_id, imp["request_id"]), max(cands.n_requests - 1, 0))
    known = cands.request_id[ridx] == imp["request_id"] if cands.n_requests else np.zeros(flat.size, bool)
    for bad, what in (
        (~known, "a request_id that is not in the requests table"),
        (known & (flat < 0), "an item_id that is not among their request's candidate_item_ids (mismatched action)"),
    ):
        if bad.any():
            f = files[int(file_idx[np.flatnonzero(bad)[0]])]
            i = int(np.flatnonzero(bad)[0])
            raise DataError(
                f"{f}: {int(bad.sum())} impression rows (in {np.unique(file_idx[bad]).size} events file(s)) have {what}; "
                f"first: request_id={int(imp['request_id'][i])}, item_id={int(imp['item_id'][i])} "
                f"(columns 'request_id', 'item_id' vs {logs}/requests)"
            )
    lp = cands.logging_probs[flat]
    off = np.abs(lp - imp["propensity"]) > cfg.propensity_tolerance
    if off.any():
        warnings.append(
            f"{int(off.sum())} impressions have a propensity that differs from their request's logging_probs entry by more "
            f"than {cfg.propensity_tolerance:g}; the impression's propensity is used"
        )
    cands.true_ctr = _read_truth(logs, cands)
    cands.logged_item = imp["item_id"].astype(np.int64)
    cands.logged_reward = imp["reward"]
    rounds = BanditRounds(cands.offsets, ridx, flat, imp["propensity"], imp["reward"])
    return ReplayData(cands, rounds, imp["domain"].astype(np.int64), imp["user_id"].astype(np.int64),
                      imp["request_id"].astype(np.int64), warnings)


# ------------------------------------------------------------------------------------------------ evaluation


def _iv(r, i) -> dict:
    iv = r.interval(i)
    return {"value": iv.value, "lo": iv.lo, "hi": iv.hi, "se": iv.se}


def _ranking(data: ReplayData, mask: np.ndarray, pol, cfg: ReplayConfig, seed: np.random.SeedSequence) -> dict[str, dict]:
    rnd = data.rounds
    scores = pol.scores[rnd.action_index[mask]]
    labels = (rnd.reward[mask] > 0).astype(np.float64)
    users = data.user[mask]
    reqs = data.request_id[mask]
    out: dict[str, dict] = {}
    ests: list[Estimate] = []
    a, u = M.auc_placements(labels, scores)
    if np.isfinite(a):
        ests.append(Estimate("auc", a, u[:, None], "mean"))
    if pol.ctr is not None:
        ll = M.logloss_values(labels, pol.ctr[rnd.action_index[mask]])
        ests.append(Estimate("logloss", float(ll.mean()), ll[:, None], "mean"))
    ss = seed.spawn(3)
    if ests:
        r = bootstrap(ests, n_boot=cfg.n_bootstrap, alpha=cfg.alpha, seed=ss[0], workers=cfg.workers)
        for i, e in enumerate(ests):
            out[e.name] = _iv(r, i)
    _, ga, cnt = M.per_group_auc(users, labels, scores)
    ok = np.isfinite(ga)
    if ok.any():
        e = Estimate("gauc", float(np.sum(ga[ok] * cnt[ok]) / np.sum(cnt[ok])), np.stack([ga[ok] * cnt[ok], cnt[ok]], 1), "ratio")
        out["gauc"] = _iv(bootstrap([e], n_boot=cfg.n_bootstrap, alpha=cfg.alpha, seed=ss[1], workers=cfg.workers), 0)
    rv = M.ranking_values(reqs, labels, scores, cfg.k)
    names = [f"hr@{cfg.k}", f"ndcg@{cfg.k}", "mrr"]
    if rv["group"].size:
        ests = [Estimate(n, float(rv[n].mean()), rv[n][:, None], "mean") for n in names]
        r = bootstrap(ests, n_boot=cfg.n_bootstrap, alpha=cfg.alpha, seed=ss[2], workers=cfg.workers)
        for i, n in enumerate(names):
            out[n] = _iv(r, i)
    return out


def evaluate(data: ReplayData, policy_a: str, policy_b: str, cfg: ReplayConfig) -> dict[str, Any]:
    """Everything the report shows, as a JSON-able dict."""
    cands, rnd = data.cands, data.rounds
    pols = {"A": make_policy(policy_a, cands, cfg.default_rule), "B": make_policy(policy_b, cands, cfg.default_rule)}
    needs_q = any(e in ("dm", "dr", "sndr", "switch_dr") for e in cfg.estimators)
    qhat = None
    if needs_q:
        if cfg.reward_model == "truth":
            if cands.true_ctr is None:
                raise DataError(f"reward_model 'truth' needs {cands.logs_dir}/truth/request_ctr (simulator ground truth)")
            qhat = cands.true_ctr
        else:
            bucket = np.repeat(cands.domain, np.diff(cands.offsets))
            qhat = fit_item_reward_model(rnd, cands.item_id, bucket, cfg.reward_model_shrinkage, cfg.reward_model_folds, cfg.seed)
    scopes: list[tuple[str, np.ndarray]] = [("all", np.ones(rnd.n, dtype=bool))]
    if cfg.per_domain:
        for d in np.unique(data.domain):
            scopes.append((f"domain={int(d)}", data.domain == d))
    root = np.random.SeedSequence(cfg.seed)
    scope_seeds = root.spawn(len(scopes))
    out_scopes: dict[str, Any] = {}
    warnings = list(data.warnings)
    for (scope, mask), sseed in zip(scopes, scope_seeds):
        sub = rnd if scope == "all" else rnd.subset(mask)
        est = {k: estimate_all(sub, p.probs, qhat, cfg.estimators, cfg.clip, cfg.switch_tau, cfg.replay_mode, cfg.seed)
               for k, p in pols.items()}
        est_seeds = sseed.spawn(len(cfg.estimators) + 1)
        table: dict[str, Any] = {}
        for name, es in zip(cfg.estimators, est_seeds):
            r = bootstrap([est["A"][name], est["B"][name]], n_boot=cfg.n_bootstrap, alpha=cfg.alpha, seed=es,
                          workers=cfg.workers, names=["A", "B"])
            table[name] = {"A": _iv(r, 0), "B": _iv(r, 1), "diff": paired_difference(r, 0, 1), "bootstrap_path": r.path}
            if name == "replay":
                table[name]["matched"] = {k: est[k]["replay"].info.get("matched") for k in pols}
        diags = {}
        for k, p in pols.items():
            dg = diagnose(sub, p.probs, cands.logging_probs, cands.item_id, cands.item_id[sub.action_index], cfg.clip,
                          cfg.min_propensity, policy=f"{k} ({p.spec}) [{scope}]")
            diags[k] = dg.as_dict()
            if scope == "all":
                warnings.extend(dg.warnings)
        truth = None
        if cands.true_ctr is not None:
            truth = {k: true_value(sub, p.probs, cands.true_ctr) for k, p in pols.items()}
        ranking = {}
        if cfg.ranking_metrics:
            rs = est_seeds[-1].spawn(2)
            ranking = {k: _ranking(data, mask, p, cfg, s) for (k, p), s in zip(pols.items(), rs)}
        out_scopes[scope] = {
            "n_rounds": sub.n,
            "logged_reward_mean": float(sub.reward.mean()) if sub.n else float("nan"),
            "estimates": table,
            "truth": truth,
            "diagnostics": diags,
            "ranking": ranking,
        }
    if "replay" in cfg.estimators:
        uni = out_scopes["all"]["diagnostics"]["A"]["logging_uniformity"]
        if np.isfinite(uni) and uni < 0.99:
            warnings.append(f"replay (Li et al. 2011) assumes uniformly random logging; here min/max logging probability per request averages {uni:.2f}, so its estimate is biased")
    return {
        "policies": {k: {"spec": p.spec, "rule": p.rule} for k, p in pols.items()},
        "n_rounds": rnd.n,
        "n_requests": cands.n_requests,
        "reward": cfg.reward,
        "reward_model": cfg.reward_model if needs_q else None,
        "ground_truth": cands.true_ctr is not None,
        "scopes": out_scopes,
        "warnings": warnings,
    }


def run_replay(
    logs: str | Path,
    policy_a: str,
    policy_b: str,
    out: str | Path,
    config: str | Path | None = None,
    overrides: list[str] | None = None,
) -> dict[str, Any]:
    """The `recsys replay` job: load, validate, estimate, print the summary, write report.{html,md,json}."""
    from recsys.evaluation.report import print_summary, write_reports

    t0 = time.perf_counter()
    cfg = load_config(ReplayConfig, config if config is not None else CONFIG_DIR / "replay.yaml", overrides)
    data = load_replay_data(logs, cfg)
    result = evaluate(data, policy_a, policy_b, cfg)
    result["logs"] = str(logs)
    result["config"] = cfg.model_dump(mode="json")
    result["elapsed_s"] = time.perf_counter() - t0
    out = Path(out)
    write_reports(result, out)
    print_summary(result)
    return result


if __name__ == "__main__":  # pragma: no cover
    import sys

    print(json.dumps(run_replay(*sys.argv[1:5])["scopes"]["all"]["estimates"], indent=1)[:2000])
