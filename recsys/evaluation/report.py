"""The replay report: one result dict -> report.json, report.md and a self-contained report.html (+ a console table).

Why self-contained: the HTML is mailed around and opened offline, so the plots are matplotlib figures inlined as
SVG (no CDN, no external files). The markdown and JSON carry the same numbers for diffs and scripts.
"""
from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

_TEMPLATE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Offline A/B replay</title>
<style>
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1100px;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:14px}th,td{border:1px solid #ccc;padding:4px 8px;text-align:right}
th{background:#f3f3f3}td.l,th.l{text-align:left}.warn{background:#fff4e5;border-left:4px solid #f0a020;padding:6px 10px;margin:4px 0}
.sig{font-weight:bold}figure{margin:1em 0}
</style></head><body>
<h1>Offline A/B replay</h1>
<p>Logs: <code>{{ r.logs }}</code> &middot; {{ r.n_rounds }} logged impressions (rounds) in {{ r.n_requests }} requests &middot;
reward <code>{{ r.reward }}</code> &middot; reward model {{ r.reward_model }} &middot; {{ r.config.n_bootstrap }} bootstrap resamples,
{{ (100 * (1 - r.config.alpha))|round(1) }}% percentile intervals &middot; clip {{ r.config.clip }}</p>
<table><tr><th class="l">policy</th><th class="l">SPEC</th><th class="l">rule</th></tr>
{% for k, p in r.policies.items() %}<tr><td class="l">{{ k }}</td><td class="l"><code>{{ p.spec }}</code></td><td class="l">{{ p.rule or "-" }}</td></tr>{% endfor %}
</table>
{% if r.warnings %}<h2>Warnings</h2>{% for w in r.warnings %}<div class="warn">{{ w }}</div>{% endfor %}{% endif %}
{% for scope, s in r.scopes.items() %}
<h2>{{ scope }} <small>({{ s.n_rounds }} rounds, logged mean reward {{ fmt(s.logged_reward_mean) }})</small></h2>
<table><tr><th class="l">estimator</th><th>A</th><th>A interval</th><th>B</th><th>B interval</th><th>A - B</th><th>interval</th><th>p</th></tr>
{% for name, e in s.estimates.items() %}<tr><td class="l">{{ name }}</td><td>{{ fmt(e.A.value) }}</td><td>[{{ fmt(e.A.lo) }}, {{ fmt(e.A.hi) }}]</td>
<td>{{ fmt(e.B.value) }}</td><td>[{{ fmt(e.B.lo) }}, {{ fmt(e.B.hi) }}]</td><td{% if e.diff.p_value < r.config.alpha %} class="sig"{% endif %}>{{ fmt(e.diff.diff) }}</td>
<td>[{{ fmt(e.diff.lo) }}, {{ fmt(e.diff.hi) }}]</td><td>{{ fmt(e.diff.p_value, 3) }}</td></tr>{% endfor %}
{% if s.truth %}<tr><td class="l"><i>ground truth</i></td><td>{{ fmt(s.truth.A) }}</td><td></td><td>{{ fmt(s.truth.B) }}</td><td></td><td>{{ fmt(s.truth.A - s.truth.B) }}</td><td></td><td></td></tr>{% endif %}
</table>
{% if figs.get(scope) %}<figure>{{ figs[scope]|safe }}</figure>{% endif %}
<table><tr><th class="l">diagnostic</th><th>A</th><th>B</th></tr>
{% for key in ["ess", "ess_fraction", "max_weight", "mean_weight", "clipped_fraction", "tiny_propensity_rounds", "min_propensity", "unsupported_mass", "never_logged_top_items"] %}
<tr><td class="l">{{ key }}</td><td>{{ fmt(s.diagnostics.A[key]) }}</td><td>{{ fmt(s.diagnostics.B[key]) }}</td></tr>{% endfor %}
</table>
{% if s.ranking and s.ranking.A %}<h3>Ranking metrics on the logged impressions</h3>
<table><tr><th class="l">metric</th><th>A</th><th>A interval</th><th>B</th><th>B interval</th></tr>
{% for m in metric_names(s.ranking) %}<tr><td class="l">{{ m }}</td>
{% for k in ["A", "B"] %}{% set v = s.ranking[k].get(m) %}{% if v %}<td>{{ fmt(v.value) }}</td><td>[{{ fmt(v.lo) }}, {{ fmt(v.hi) }}]</td>{% else %}<td>-</td><td></td>{% endif %}{% endfor %}</tr>{% endfor %}
</table>{% endif %}
{% endfor %}
{% if figs.get("_domains") %}<h2>Per domain ({{ r.config.headline }})</h2><figure>{{ figs["_domains"]|safe }}</figure>{% endif %}
{% if figs.get("_ranking") %}<h2>Ranking metrics (all rounds)</h2><figure>{{ figs["_ranking"]|safe }}</figure>{% endif %}
<p><small>Generated in {{ fmt(r.elapsed_s, 3) }} s. Estimators: recsys.evaluation.ope; intervals: recsys.evaluation.bootstrap.</small></p>
</body></html>
"""


def fmt(x: Any, digits: int = 5) -> str:
    if x is None:
        return "-"
    if isinstance(x, (int, np.integer)) and not isinstance(x, bool):
        return str(int(x))
    try:
        xf = float(x)
    except (TypeError, ValueError):
        return str(x)
    if math.isnan(xf):
        return "nan"
    return f"{xf:.{digits}g}"


def _metric_names(ranking: dict) -> list[str]:
    names: list[str] = []
    for k in ("A", "B"):
        for m in ranking.get(k, {}):
            if m not in names:
                names.append(m)
    return names


def _svg(fig) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None})
    s = buf.getvalue()
    return s[s.index("<svg"):]


def _interval_plot(rows: list[tuple[str, dict, dict]], truth: dict | None, title: str):
    """rows: (label, A interval dict, B interval dict)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 0.45 * len(rows) + 1.4))
    ys = np.arange(len(rows))
    for off, key, color in ((-0.15, "A", "#1f77b4"), (0.15, "B", "#d62728")):
        v = np.array([r[1 if key == "A" else 2]["value"] for r in rows], dtype=float)
        lo = np.array([r[1 if key == "A" else 2]["lo"] for r in rows], dtype=float)
        hi = np.array([r[1 if key == "A" else 2]["hi"] for r in rows], dtype=float)
        err = np.vstack([np.clip(v - lo, 0, None), np.clip(hi - v, 0, None)])
        err = np.nan_to_num(err)
        ax.errorbar(v, ys + off, xerr=err, fmt="o", color=color, capsize=3, label=key)
    if truth:
        ax.axvline(truth["A"], color="#1f77b4", ls="--", lw=1, label="truth A")
        ax.axvline(truth["B"], color="#d62728", ls="--", lw=1, label="truth B")
    ax.set_yticks(ys)
    ax.set_yticklabels([r[0] for r in rows])
    ax.invert_yaxis()
    ax.set_title(title)
    ax.grid(axis="x", alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    return fig


def figures(r: dict) -> dict[str, str]:
    import matplotlib.pyplot as plt

    out: dict[str, str] = {}
    for scope, s in r["scopes"].items():
        rows = [(name, e["A"], e["B"]) for name, e in s["estimates"].items()]
        if rows:
            fig = _interval_plot(rows, s.get("truth"), f"Estimated value with {100 * (1 - r['config']['alpha']):.0f}% intervals — {scope}")
            out[scope] = _svg(fig)
            plt.close(fig)
    head = r["config"].get("headline")
    dom = [(k, s) for k, s in r["scopes"].items() if k != "all" and head in s["estimates"]]
    if dom:
        rows = [(k, s["estimates"][head]["A"], s["estimates"][head]["B"]) for k, s in dom]
        fig = _interval_plot(rows, None, f"{head} per domain")
        out["_domains"] = _svg(fig)
        plt.close(fig)
    rk = r["scopes"].get("all", {}).get("ranking") or {}
    if rk.get("A") and rk.get("B"):
        names = [m for m in _metric_names(rk) if m in rk["A"] and m in rk["B"]]
        if names:
            fig = _interval_plot([(m, rk["A"][m], rk["B"][m]) for m in names], None, "Ranking metrics on the logged impressions")
            out["_ranking"] = _svg(fig)
            plt.close(fig)
    return out


def to_html(r: dict) -> str:
    import jinja2

    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    return env.from_string(_TEMPLATE).render(r=r, figs=figures(r), fmt=fmt, metric_names=_metric_names)


def to_markdown(r: dict) -> str:
    a = r["config"]["alpha"]
    lines = [
        "# Offline A/B replay",
        "",
        f"Logs: `{r['logs']}` — {r['n_rounds']} rounds in {r['n_requests']} requests; reward `{r['reward']}`; "
        f"reward model {r['reward_model']}; {r['config']['n_bootstrap']} bootstrap resamples, {100 * (1 - a):.0f}% percentile intervals; clip {r['config']['clip']}.",
        "",
    ]
    for k, p in r["policies"].items():
        lines.append(f"- **{k}**: `{p['spec']}` (rule: {p['rule'] or '-'})")
    if r["warnings"]:
        lines += ["", "## Warnings", ""] + [f"- {w}" for w in r["warnings"]]
    for scope, s in r["scopes"].items():
        lines += ["", f"## {scope} ({s['n_rounds']} rounds)", "",
                  "| estimator | A | A interval | B | B interval | A - B | interval | p |", "|---|---|---|---|---|---|---|---|"]
        for name, e in s["estimates"].items():
            d = e["diff"]
            lines.append(
                f"| {name} | {fmt(e['A']['value'])} | [{fmt(e['A']['lo'])}, {fmt(e['A']['hi'])}] | {fmt(e['B']['value'])} | "
                f"[{fmt(e['B']['lo'])}, {fmt(e['B']['hi'])}] | {fmt(d['diff'])} | [{fmt(d['lo'])}, {fmt(d['hi'])}] | {fmt(d['p_value'], 3)} |"
            )
        if s.get("truth"):
            t = s["truth"]
            lines.append(f"| *ground truth* | {fmt(t['A'])} | | {fmt(t['B'])} | | {fmt(t['A'] - t['B'])} | | |")
        dA, dB = s["diagnostics"]["A"], s["diagnostics"]["B"]
        lines += ["", f"Diagnostics: ESS A {fmt(dA['ess'])} ({fmt(dA['ess_fraction'], 3)} of n), B {fmt(dB['ess'])} ({fmt(dB['ess_fraction'], 3)}); "
                  f"max weight A {fmt(dA['max_weight'])}, B {fmt(dB['max_weight'])}; unsupported mass A {fmt(dA['unsupported_mass'])}, B {fmt(dB['unsupported_mass'])}."]
        rk = s.get("ranking") or {}
        if rk.get("A") or rk.get("B"):
            lines += ["", "| metric | A | A interval | B | B interval |", "|---|---|---|---|---|"]
            for m in _metric_names(rk):
                cells = []
                for k in ("A", "B"):
                    v = rk.get(k, {}).get(m)
                    cells += [fmt(v["value"]), f"[{fmt(v['lo'])}, {fmt(v['hi'])}]"] if v else ["-", ""]
                lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _json_default(o: Any):
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def write_reports(r: dict, out: str | Path) -> dict[str, Path]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "report.json", "md": out / "report.md", "html": out / "report.html"}
    paths["json"].write_text(json.dumps(r, indent=1, default=_json_default))
    paths["md"].write_text(to_markdown(r))
    paths["html"].write_text(to_html(r))
    return paths


def print_summary(r: dict) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console(width=max(Console().width, 130))
    s = r["scopes"]["all"]
    pct = f"{100 * (1 - r['config']['alpha']):.0f}%"
    t = Table(title=escape(f"Offline A/B replay: {r['n_rounds']} rounds; A = {r['policies']['A']['spec']}, B = {r['policies']['B']['spec']} ({pct} intervals)"))
    for c in ("estimator", "A", "B", "A - B", "p"):
        t.add_column(c, justify="left" if c == "estimator" else "right")

    def cell(v: dict, key: str = "value") -> str:
        return f"{fmt(v[key], 4)} [{fmt(v['lo'], 4)}, {fmt(v['hi'], 4)}]"

    for name, e in s["estimates"].items():
        d = e["diff"]
        t.add_row(name, cell(e["A"]), cell(e["B"]), cell(d, "diff"), fmt(d["p_value"], 3))
    if s.get("truth"):
        tr = s["truth"]
        t.add_row("ground truth", fmt(tr["A"], 4), fmt(tr["B"], 4), fmt(tr["A"] - tr["B"], 4), "")
    console.print(t)
    for w in r["warnings"]:
        console.print("[yellow]warning:[/yellow] " + escape(w))
