"""Diagnostics that say when an off-policy estimate should not be trusted.

- Effective sample size of the importance weights, ESS = (sum w)^2 / sum w^2 (Kish): how many uniformly weighted
  rounds the weighted estimate is worth. A small ESS / n means a few rounds dominate IPS/DR.
- Tiny logging propensities (below `min_propensity`): their weights explode; clipping them adds bias.
- Support: candidates the logging policy could never show (logging probability 0) but the target puts mass on.
  No importance-weighted estimator can see their reward, so IPS/SNIPS/DR are biased by that mass; only DM covers them.
  Also: items the target would rank first that never appear among the logged actions.
- Replay (Li et al.) assumes uniformly random logging; we report how far from uniform the logging was.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from recsys.evaluation.ope import BanditRounds, importance_weights, segment_sum


def effective_sample_size(w: np.ndarray) -> float:
    w = np.asarray(w, dtype=np.float64)
    s2 = float(np.dot(w, w))
    return float(w.sum() ** 2 / s2) if s2 > 0 else 0.0


@dataclass
class Diagnostics:
    n_rounds: int
    ess: float
    ess_fraction: float
    max_weight: float
    mean_weight: float
    clipped_fraction: float
    tiny_propensity_rounds: int
    min_propensity: float
    unsupported_mass: float  # mean over rounds of the target's probability on zero-logging-probability candidates
    unsupported_rounds: int  # rounds whose request has such mass
    never_logged_top_items: int  # distinct items the target ranks first that never appear as a logged action
    logging_uniformity: float  # mean over requests of min/max logging probability (1 = uniform)
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def diagnose(
    data: BanditRounds,
    target: np.ndarray,
    logging_probs: np.ndarray | None = None,
    cand_item: np.ndarray | None = None,
    logged_item: np.ndarray | None = None,
    clip: float | None = None,
    min_propensity: float = 1e-3,
    min_ess_fraction: float = 0.01,
    policy: str = "target",
) -> Diagnostics:
    target = np.asarray(target, dtype=np.float64)
    w = importance_weights(data, target)
    n = data.n
    ess = effective_sample_size(w)
    tiny = int(np.count_nonzero(data.pscore < min_propensity))
    unsupported_mass = 0.0
    unsupported_rounds = 0
    uniformity = float("nan")
    if logging_probs is not None:
        lp = np.asarray(logging_probs, dtype=np.float64)
        mass = segment_sum(np.where(lp <= 0, target, 0.0), data.offsets)
        per_round = mass[data.round_request]
        unsupported_mass = float(per_round.mean()) if n else 0.0
        unsupported_rounds = int(np.count_nonzero(per_round > 1e-12))
        sizes = np.diff(data.offsets)
        ne = sizes > 0
        if ne.any():
            starts = data.offsets[:-1][ne]
            mx = np.maximum.reduceat(lp, starts)
            mn = np.minimum.reduceat(lp, starts)
            with np.errstate(invalid="ignore", divide="ignore"):
                uniformity = float(np.nanmean(np.where(mx > 0, mn / mx, np.nan)))
    never = 0
    if cand_item is not None and logged_item is not None and data.n_requests:
        sizes = np.diff(data.offsets)
        ne = sizes > 0
        starts = data.offsets[:-1][ne]
        cand_req = data.candidate_request()
        order = np.lexsort((np.arange(target.size), -target, cand_req))
        top_items = np.unique(np.asarray(cand_item)[order[starts]])
        never = int(np.count_nonzero(~np.isin(top_items, np.unique(logged_item))))
    warnings: list[str] = []
    if tiny:
        warnings.append(
            f"{policy}: {tiny} of {n} rounds have logging propensity < {min_propensity:g} "
            f"(min {float(data.pscore.min()):.3g}); their importance weights dominate IPS/DR — consider clip"
        )
    if n and ess < min_ess_fraction * n:
        warnings.append(f"{policy}: effective sample size {ess:.0f} is {ess / n:.2%} of {n} rounds: IPS/DR estimates are unstable")
    if unsupported_rounds:
        warnings.append(
            f"{policy}: puts {unsupported_mass:.2%} of its mass (in {unsupported_rounds} rounds) on candidates the logging "
            "policy never shows (logging probability 0): IPS/SNIPS/DR are biased by that mass, only DM covers it"
        )
    if never:
        warnings.append(f"{policy}: {never} items it ranks first never appear among the logged actions")
    return Diagnostics(
        n_rounds=n,
        ess=ess,
        ess_fraction=ess / n if n else float("nan"),
        max_weight=float(w.max()) if n else float("nan"),
        mean_weight=float(w.mean()) if n else float("nan"),
        clipped_fraction=float(np.mean(w > clip)) if (clip is not None and n) else 0.0,
        tiny_propensity_rounds=tiny,
        min_propensity=float(data.pscore.min()) if n else float("nan"),
        unsupported_mass=unsupported_mass,
        unsupported_rounds=unsupported_rounds,
        never_logged_top_items=never,
        logging_uniformity=uniformity,
        warnings=warnings,
    )
