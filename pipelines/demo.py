"""`recsys demo` / `make demo`: the main job end to end on embedded defaults.

simulate logs -> inspect -> point-in-time training table -> train two rankers (LONGER and the pooling baseline) on
Ray workers with TorchRec sharded embeddings -> export both -> offline A/B replay of the two exported rankers on the
logged impressions (with the simulator's ground truth beside the estimates). Every step writes under OUT; a step
whose output already exists is skipped, so a second run only redoes what is missing.
"""
from __future__ import annotations

import time
from pathlib import Path

from pydantic import Field

from recsys.config import CONFIG_DIR, StrictModel, load_config


class DemoConfig(StrictModel):
    simulator: list[str] = Field(default_factory=lambda: ["users=2000", "items=5000", "days=7", "domains=3", "seed=0"])
    features: list[str] = Field(default_factory=lambda: ["max_len=256"])
    models: dict[str, list[str]] = Field(default_factory=dict)  # configs/<name>.yaml -> --set overrides
    workers: int = Field(2, ge=1)
    use_ray: bool = True
    policy_rule: str = "softmax(temperature=0.1)"
    replay: list[str] = Field(default_factory=list)


def _step(title: str) -> float:
    from rich.console import Console

    Console().rule(f"[bold]{title}")
    return time.perf_counter()


def run_demo(out: str | Path, config: str | Path | None = None, overrides: list[str] | None = None) -> dict:
    from rich.console import Console

    out = Path(out).resolve()
    cfg = load_config(DemoConfig, config if config is not None else CONFIG_DIR / "demo.yaml", overrides)
    data, features = out / "data", out / "features"
    timings: dict[str, float] = {}

    t = _step("1/5 simulate a multi-domain platform (with ground truth)")
    if not (data / "meta.json").exists():
        from recsys.data.simulator import SimulatorConfig, simulate

        simulate(load_config(SimulatorConfig, CONFIG_DIR / "simulator.yaml", cfg.simulator), data)
    from recsys.data.inspect import inspect_data, print_summary

    print_summary(inspect_data(data))
    timings["simulate+inspect"] = time.perf_counter() - t

    t = _step("2/5 point-in-time training table")
    if not (features / "training.json").exists():
        from feature_store.definitions import load_feature_config
        from feature_store.offline import build_training_table

        build_training_table(data, features, load_feature_config(None, cfg.features))
    timings["features"] = time.perf_counter() - t

    from pipelines.train_ranker import run_training
    from recsys.training.export import export_run

    exported = {}
    for i, (name, sets) in enumerate(cfg.models.items()):
        t = _step(f"3/5 train {name} ({cfg.workers} {'Ray workers' if cfg.use_ray else 'process'}, TorchRec sharded embeddings)")
        run_dir, model_dir = out / "runs" / name, out / "models" / name
        if not (model_dir / "version.json").exists():
            run_training(CONFIG_DIR / f"{name}.yaml", features, run_dir, workers=cfg.workers, use_ray=cfg.use_ray, resume=(run_dir / "config.yaml").exists(), overrides=sets)
            _step(f"4/5 export {name}")
            export_run(run_dir, model_dir)
        exported[name] = model_dir
        timings[f"train+export {name}"] = time.perf_counter() - t

    t = _step("5/5 offline A/B replay of the two exported rankers")
    from pipelines.replay_ab import run_replay

    names = list(exported)
    a = f"ranker:{exported[names[0]]}@{cfg.policy_rule}"
    b = f"ranker:{exported[names[1]]}@{cfg.policy_rule}" if len(names) > 1 else "logging"
    result = run_replay(data, a, b, out / "replay", overrides=cfg.replay)
    timings["replay"] = time.perf_counter() - t
    c = Console()
    c.rule("[bold green]demo done")
    for k, v in timings.items():
        c.print(f"  {k:<28} {v:8.1f} s")
    c.print(f"  report: {out / 'replay' / 'report.html'}")
    return {"timings": timings, "report": str(out / "replay"), "policies": [a, b], "replay": result}
