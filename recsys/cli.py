"""The `recsys` command. Thin: parses arguments, then lazily imports the library or pipeline that does the work
(so `recsys --help` stays fast). Errors the user can fix (bad config, bad data) print one clear message and exit 2.
"""
from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Callable, List, Optional

import typer

app = typer.Typer(help="recsys: train rankers, serve retrieval+ranking, replay offline A/B tests.", no_args_is_help=True, add_completion=False)
data_app = typer.Typer(help="Simulate, import and inspect parquet logs (the data contract).", no_args_is_help=True)
features_app = typer.Typer(help="Point-in-time feature building (offline store).", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(features_app, name="features")

SetOpt = typer.Option(None, "--set", help="Override a config field: --set a.b=value (repeatable).")


def user_errors(fn: Callable) -> Callable:
    """Turn the errors a user can act on into one line on stderr and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from recsys.config import ConfigError
        from recsys.data.io import DataError

        try:
            return fn(*args, **kwargs)
        except (ConfigError, DataError, FileNotFoundError) as e:
            typer.secho(f"error: {e}", fg="red", err=True)
            raise typer.Exit(2)

    return wrapper


@app.command()
def doctor() -> None:
    """Report versions of the stack, whether CUDA is usable, and what is misconfigured."""
    from recsys.doctor import run_doctor

    raise typer.Exit(run_doctor())


@data_app.command("simulate")
@user_errors
def data_simulate(
    out: Path = typer.Option(..., help="Output data directory."),
    users: Optional[int] = typer.Option(None, help="Number of users (default 2000, or the --config file's)."),
    items: Optional[int] = typer.Option(None, help="Number of items (catalogue at the end of the period) (default 5000)."),
    days: Optional[int] = typer.Option(None, help="Days of logs (default 7)."),
    domains: Optional[int] = typer.Option(None, help="Number of domains (scenarios) (default 3)."),
    seed: Optional[int] = typer.Option(None, help="Random seed (same seed -> identical files) (default 0)."),
    config: Optional[Path] = typer.Option(None, help="YAML with the simulator's remaining knobs."),
    set_: Optional[List[str]] = SetOpt,
) -> None:
    """Write a synthetic multi-domain platform's logs with ground truth (see recsys.data.simulator)."""
    from recsys.config import load_config
    from recsys.data.simulator import SimulatorConfig, simulate

    # only the options given override the config file (and --set overrides them all)
    given = {"users": users, "items": items, "days": days, "domains": domains, "seed": seed}
    overrides = [f"{k}={v}" for k, v in given.items() if v is not None] + list(set_ or [])
    cfg = load_config(SimulatorConfig, config, overrides)
    c = simulate(cfg, out)["counts"]
    typer.echo(
        f"wrote {c['events']:,} events ({c['impressions']:,} impressions, CTR {c['impression_ctr']:.3f}), "
        f"{c['requests']:,} requests, longest user sequence {c['max_user_sequence']:,} to {out}"
    )


@data_app.command("import")
@user_errors
def data_import(
    source: Path = typer.Option(..., help="CSV/TSV/parquet file or directory of them."),
    format: str = typer.Option(..., "--format", help="csv | tsv | parquet"),
    map: str = typer.Option(..., "--map", help="user_id=COL,item_id=COL,ts=COL[,domain=COL,action=COL,...]"),
    out: Path = typer.Option(..., help="Output data directory."),
) -> None:
    """Map any interaction log onto the data contract (ids re-encoded, vocabularies and rejects saved)."""
    from recsys.data.importer import import_log

    report = import_log(source, format, map, out)
    typer.echo(
        f"imported {report.valid_rows:,} rows ({report.rejected_rows:,} rejected -> {report.rejects_path}, "
        f"{report.duplicates_dropped:,} duplicates dropped; timestamps: {report.ts_format}) to {out}"
    )
    if report.valid_rows == 0:
        typer.secho(f"error: no valid rows in {source} ({report.rejected_rows} rejected, see {report.rejects_path})", fg="red", err=True)
        raise typer.Exit(1)


@data_app.command("inspect")
@user_errors
def data_inspect(data: Path = typer.Argument(..., help="Data directory.")) -> None:
    """Counts, users, items, domains, time range, sequence-length percentiles, click rate per domain."""
    from recsys.data.inspect import inspect_data, print_summary

    print_summary(inspect_data(data))


@features_app.command("build")
@user_errors
def features_build(
    data: Path = typer.Option(..., help="Data directory (events, items)."),
    out: Path = typer.Option(..., help="Output directory for the training table."),
    config: Optional[Path] = typer.Option(None, help="Feature definitions YAML (default configs/features.yaml)."),
    set_: Optional[List[str]] = SetOpt,
) -> None:
    """Build the point-in-time training table: each impression with the user's last L events before it."""
    from feature_store.offline import build_training_table
    from feature_store.definitions import load_feature_config

    build_training_table(data, out, load_feature_config(config, set_))


@app.command()
@user_errors
def train(
    config: Optional[Path] = typer.Option(None, help="Training YAML, e.g. configs/longer.yaml (with --resume: default the run's saved config)."),
    data: Path = typer.Option(..., help="Training table directory (from `recsys features build`) or a data directory."),
    out: Path = typer.Option(..., help="Run directory: checkpoints, metrics.jsonl, config."),
    workers: int = typer.Option(1, help="Ray Train workers."),
    no_ray: bool = typer.Option(False, "--no-ray", help="Same code path in this process (world size 1)."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the run directory's last checkpoint."),
    set_: Optional[List[str]] = SetOpt,
) -> None:
    """Train a ranker with TorchRec sharded embeddings on Ray workers."""
    from pipelines.train_ranker import run_training

    run_training(config, data, out, workers=workers, use_ray=not no_ray, resume=resume, overrides=set_)


@app.command()
@user_errors
def export(
    run_dir: Path = typer.Argument(..., help="Run directory of `recsys train`."),
    out: Path = typer.Option(..., help="Serving artifact directory."),
) -> None:
    """Export an unsharded serving artifact (weights, config, vocabularies, version)."""
    from recsys.training.export import export_run

    export_run(run_dir, out)


@app.command()
@user_errors
def replay(
    logs: Path = typer.Option(..., help="Logged data directory (events with impressions + requests)."),
    policy_a: str = typer.Option(..., "--policy-a", help="Policy SPEC: SOURCE\\[@RULE] (grammar below)."),
    policy_b: str = typer.Option(..., "--policy-b", help="Policy SPEC: SOURCE\\[@RULE]."),
    out: Path = typer.Option(..., help="Report directory (HTML, markdown, JSON)."),
    config: Optional[Path] = typer.Option(None, help="Replay YAML (default configs/replay.yaml)."),
    set_: Optional[List[str]] = SetOpt,
) -> None:
    """Offline A/B: off-policy estimates of two policies on logged data, with intervals and a report.

    \b
    SPEC := SOURCE\\[@RULE]
    SOURCE: logging | uniform | random\\[:SEED] | popularity | oracle:truth
            | scores:PATH (parquet: request_id, item_id, score) | ranker:MODEL_DIR (`recsys export` output)
    RULE:   softmax(temperature=T) | epsilon_greedy(epsilon=E, k=K) | greedy
            (logging and uniform take no rule; others default to the config's default_rule)
    \b
    Example: recsys replay --logs data --policy-a 'ranker:runs/x/export@softmax(temperature=0.5)'
             --policy-b logging --out report
    """
    from pipelines.replay_ab import run_replay

    run_replay(logs, policy_a, policy_b, out, config=config, overrides=set_)


@app.command()
@user_errors
def demo(out: Path = typer.Option(Path("runs/demo"), help="Work directory for the demo.")) -> None:
    """End to end on embedded defaults: simulate -> inspect -> features -> train -> export -> replay."""
    from pipelines.demo import run_demo

    run_demo(out)


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
