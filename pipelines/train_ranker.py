"""`recsys train`: train a ranker on Ray Train workers with TorchRec-sharded embeddings (or in-process, world size 1).

Driver duties: resolve the config (a resumed run reuses RUN_DIR/config.yaml so it cannot silently change model or
vocabularies), locate or build the training table, infer the BatchSpec once (saved as RUN_DIR/batch_spec.json,
used by every worker and by `export`), start the workers, show a progress bar by tailing RUN_DIR/metrics.jsonl, and
always shut Ray down.

Ray specifics (STACK.md): token auth off (RAY_AUTH_MODE=disabled), a private short temp dir (its path is written to
RUN_DIR/ray_temp_dir so tooling can find this run's Ray session), and ray.init(num_cpus) above the core count so
workers never starve Ray's own tasks (the known hang). Workers use gloo on CPU, NCCL on CUDA (Ray's TorchConfig).
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from recsys.config import ConfigError, apply_overrides, dump_config, read_yaml, validate
from recsys.data.io import DataError
from recsys.training.config import TrainConfig, check_device_support, resolve_device

RAY_TEMP_FILE = "ray_temp_dir"


def _resolve_data(data: Path, run_dir: Path) -> list[Path]:
    from recsys.training.data import find_table_files

    files = find_table_files(data)
    if files is not None:
        return files
    if (data / "events").is_dir():
        built = run_dir / "features"
        files = find_table_files(built) if built.exists() else None
        if files is None:
            try:
                from feature_store.definitions import load_feature_config
                from feature_store.offline import build_training_table
            except ImportError as e:
                raise DataError(f"{data}: raw data dir without a training table, and the feature store is unavailable ({e})") from None
            print(f"[train] {data} has no training table: building one in {built} (recsys features build)", flush=True)
            build_training_table(data, built, load_feature_config(None, None))
            files = find_table_files(built)
        if files:
            return files
    raise DataError(f"{data}: neither a training table (parquet files, or a training/ subdir) nor a data dir with events/")


def _load_config(config: Path | None, run_dir: Path, resume: bool, overrides: list[str] | None) -> TrainConfig:
    """New run: --config + --set. Resume: the run's saved config + --set, or --config + --set when given, whose
    `model:` block must then equal the saved one (the checkpoint holds that architecture)."""
    saved = run_dir / "config.yaml"
    if resume and saved.exists():
        base = validate(TrainConfig, read_yaml(saved), str(saved))
        if config is None:
            return validate(TrainConfig, apply_overrides(base.model_dump(mode="json"), overrides), f"{saved} + --set")
        given = validate(TrainConfig, apply_overrides(read_yaml(config), overrides), str(config))
        if given.model != base.model:
            raise ConfigError(f"--resume: the model block of {config} differs from the run's {saved}; "
                              "a checkpoint only resumes into the architecture it was trained with")
        return given
    if config is None:
        raise ConfigError("--config is required for a new run")
    return validate(TrainConfig, apply_overrides(read_yaml(config), overrides), str(config))


def prepare_run(config: Path | None, data: Path, out: Path, resume: bool, overrides: list[str] | None) -> dict[str, Any]:
    """Everything the workers need, as a plain (picklable) job dict; writes config.yaml and batch_spec.json."""
    from recsys.training.checkpoint import latest_checkpoint
    from recsys.training.data import make_spec

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if not resume and (latest_checkpoint(out) is not None or (out / "metrics.jsonl").exists()):
        raise ConfigError(f"--out {out}: this run directory already holds a run; pass --resume to continue it or choose a new directory")
    cfg = _load_config(config, out, resume, overrides)
    check_device_support(cfg, resolve_device(cfg))
    files = _resolve_data(Path(data), out)
    spec_path = out / "batch_spec.json"
    if resume and spec_path.exists():
        spec = json.loads(spec_path.read_text())
    else:
        s = make_spec(files, cfg.data)
        spec = {"max_len": s.max_len, "vocab_sizes": dict(s.vocab_sizes)}
        spec_path.write_text(json.dumps(spec, indent=1))
    dump_config(cfg, out / "config.yaml")
    return {"config": cfg.model_dump(mode="json"), "spec": spec, "files": [str(f) for f in files], "run_dir": str(out), "resume": resume}


class _Progress:
    """Tails RUN_DIR/metrics.jsonl on the driver: a rich bar on a terminal, plain lines otherwise."""

    def __init__(self, run_dir: Path):
        self.path = run_dir / "metrics.jsonl"
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.offset = self.path.stat().st_size if self.path.exists() else 0

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(timeout=5)

    def _records(self):
        if not self.path.exists():
            return []
        with open(self.path) as f:
            f.seek(self.offset)
            chunk = f.read()
        end = chunk.rfind("\n")
        if end < 0:
            return []
        self.offset += len(chunk[: end + 1].encode())
        return [json.loads(line) for line in chunk[: end + 1].splitlines() if line.strip()]

    def _run(self) -> None:
        tty = sys.stderr.isatty()
        bar = task = None
        if tty:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            bar = Progress(TextColumn("train"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"), TimeRemainingColumn())
            bar.start()
        try:
            while True:
                done = self.stop.is_set()
                for r in self._records():
                    if r.get("kind") == "train":
                        info = f"loss {r['loss']:.4f}  {r['examples_per_s']:.0f} ex/s"
                        if bar is not None:
                            if task is None:
                                task = bar.add_task("train", total=r["total_steps"], info=info)
                            bar.update(task, completed=r["step"], info=info)
                        else:
                            print(f"[train] step {r['step']}/{r['total_steps']} loss={r['loss']:.4f} {r['examples_per_s']:.0f} ex/s", flush=True)
                    elif r.get("kind") == "eval":
                        o = r["overall"]
                        msg = f"[eval] step {r['step']} auc={o.get('auc', float('nan')):.4f} gauc={o.get('gauc', float('nan')):.4f} logloss={o.get('logloss', float('nan')):.4f}"
                        (bar.console.print if bar is not None else print)(msg)
                if done:
                    break
                self.stop.wait(0.5)
        finally:
            if bar is not None:
                bar.stop()


def ray_runtime_env(threads: int) -> dict[str, Any]:
    """Every Ray worker of a training job: no token auth, `threads` intra-op threads, and our process setup first
    (recsys.training.distributed.prepare_worker_process: before Ray Train builds the process group)."""
    return {
        "env_vars": {"RAY_AUTH_MODE": "disabled", "RECSYS_THREADS_PER_WORKER": str(threads), "OMP_NUM_THREADS": str(threads)},
        "worker_process_setup_hook": "recsys.training.distributed.prepare_worker_process",
    }


def _run_ray(job: dict[str, Any], workers: int, use_gpu: bool) -> None:
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    import ray
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from recsys.training.loop import train_worker

    run_dir = Path(job["run_dir"])
    tmp = tempfile.mkdtemp(prefix="recsys-ray-")  # short: Ray's unix socket paths must stay < 108 bytes
    (run_dir / RAY_TEMP_FILE).write_text(tmp)
    cores = os.cpu_count() or 1
    threads = int(os.environ.get("RECSYS_THREADS_PER_WORKER") or max(1, cores // workers))  # intra-op threads per worker
    try:
        runtime_env = ray_runtime_env(threads)
        if os.environ.get("RAY_ADDRESS"):  # an existing cluster: it owns its resources and temp dirs
            ray.init(runtime_env=runtime_env, log_to_driver=True)
        else:
            ray.init(
                num_cpus=max(cores, workers) + 2,  # above the core count: Ray's own tasks never starve (STACK.md)
                _temp_dir=tmp,
                include_dashboard=False,
                # the driver's bar (from metrics.jsonl) is the progress view; worker stdout would duplicate it and
                # interleave Ray Train's controller chatter. Worker failures still surface through trainer.fit().
                log_to_driver=False,
                runtime_env=runtime_env,
            )
        trainer = TorchTrainer(
            train_worker,
            train_loop_config=job,
            torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
            scaling_config=ScalingConfig(num_workers=workers, use_gpu=use_gpu, resources_per_worker={"CPU": 1}),
            run_config=RunConfig(name="train", storage_path=str((run_dir / "ray_results").resolve()), failure_config=FailureConfig(max_failures=0)),
        )
        trainer.fit()
    finally:
        ray.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)


def run_training(
    config: Path | None,
    data: Path,
    out: Path,
    workers: int = 1,
    use_ray: bool = True,
    resume: bool = False,
    overrides: list[str] | None = None,
) -> dict[str, Any] | None:
    """Train (or resume) into `out`; returns the last evaluation record (also in out/metrics.jsonl)."""
    from recsys.training.loop import train_worker

    if workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {workers}")
    if not use_ray and workers != 1:
        raise ConfigError("--no-ray runs one in-process worker: use --workers 1 (or drop --no-ray)")
    job = prepare_run(config, data, out, resume, overrides)
    cfg = TrainConfig.model_validate(job["config"])
    use_gpu = resolve_device(cfg).type == "cuda"
    t0 = time.time()
    with _Progress(Path(out)):
        if use_ray:
            _run_ray(job, workers, use_gpu)
        else:
            train_worker(job)
    final = last_eval(Path(out))
    print(f"[train] done in {time.time() - t0:.1f}s; run dir {out}", flush=True)
    return final


def last_eval(run_dir: Path) -> dict[str, Any] | None:
    p = run_dir / "metrics.jsonl"
    if not p.exists():
        return None
    evals = [json.loads(line) for line in p.read_text().splitlines() if line.strip() and '"eval"' in line]
    return evals[-1] if evals else None
