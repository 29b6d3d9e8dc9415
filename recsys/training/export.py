"""Serving artifact: an unsharded model that loads in a plain process (no process group, no DMP, no Ray).

`export_run(run_dir, out)` reads the run's latest DCP checkpoint into a freshly built plain model (DCP reshards the
saved shards into full tensors in this one process) and writes, atomically (OUT.partial -> OUT):
  OUT/model.pt        the plain state_dict (torch.save; loads with weights_only=True)
  OUT/config.yaml     the full training config (its `model:` block rebuilds the architecture)
  OUT/batch_spec.json max_len and vocabulary sizes: how raw rows become batches for this model
  OUT/version.json    format version, model name, version string, source run/step, library versions, created time

`load_exported(model_dir, device="cpu") -> ExportedModel(model, spec, info)`: a NamedTuple, so
    model, spec, info = load_exported(d)       # or load_exported(d).model
`model` is the `Ranker` in eval mode (forward / encode_user / score), `spec` the `BatchSpec` to feed
`recsys.data.batch.build_batch`, `info` an `ExportInfo` (version string for responses and hot reload, step, ...).
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch

from recsys.config import ConfigError, read_yaml, validate
from recsys.data.batch import BatchSpec
from recsys.models.base import Ranker

FORMAT_VERSION = 1


@dataclass(frozen=True)
class ExportInfo:
    format_version: int
    model_name: str
    version: str  # "<model>-<step>-<hash8>": unique per exported weights
    step: int
    source_run: str
    created: str
    torch: str
    torchrec: str


class ExportedModel(NamedTuple):
    model: Ranker
    spec: BatchSpec
    info: ExportInfo


def _spec_from_json(d: dict[str, Any]) -> BatchSpec:
    return BatchSpec(max_len=int(d["max_len"]), vocab_sizes={k: int(v) for k, v in d["vocab_sizes"].items()})


def export_run(run_dir: str | Path, out: str | Path) -> ExportInfo:
    """Latest checkpoint of `run_dir` -> serving artifact at `out` (replaced atomically if it exists)."""
    import torchrec

    from recsys.training.checkpoint import latest_checkpoint, load_model_only, read_meta
    from recsys.training.config import TrainConfig
    from recsys.training.loop import build_training_model

    run_dir, out = Path(run_dir), Path(out)
    cfg_path, spec_path = run_dir / "config.yaml", run_dir / "batch_spec.json"
    for p in (cfg_path, spec_path):
        if not p.exists():
            raise FileNotFoundError(f"{p}: not found; {run_dir} is not a `recsys train` run directory")
    ckpt = latest_checkpoint(run_dir)
    if ckpt is None:
        raise FileNotFoundError(f"{run_dir}/checkpoints/latest: the run has no checkpoint to export")
    cfg = validate(TrainConfig, read_yaml(cfg_path), str(cfg_path))
    spec_json = json.loads(spec_path.read_text())
    spec = _spec_from_json(spec_json)
    torch.manual_seed(0)
    model = build_training_model(cfg.model_copy(update={"activation_checkpointing": False}), spec)
    sd = model.state_dict()
    load_model_only(ckpt, sd)
    model.load_state_dict(sd)
    step = int(read_meta(ckpt)["step"])

    h = hashlib.sha256()
    for k in sorted(sd):
        h.update(k.encode())
        h.update(sd[k].detach().cpu().contiguous().numpy().tobytes())
    info = ExportInfo(
        format_version=FORMAT_VERSION,
        model_name=cfg.model.name,
        version=f"{cfg.model.name}-{step}-{h.hexdigest()[:8]}",
        step=step,
        source_run=str(run_dir.resolve()),
        created=dt.datetime.now(dt.timezone.utc).isoformat(),
        torch=torch.__version__,
        torchrec=getattr(torchrec, "__version__", "?"),
    )
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    torch.save({k: v.detach().cpu() for k, v in sd.items()}, partial / "model.pt")
    shutil.copyfile(cfg_path, partial / "config.yaml")
    (partial / "batch_spec.json").write_text(json.dumps(spec_json, indent=1))
    (partial / "version.json").write_text(json.dumps(asdict(info), indent=1))
    if out.exists():
        old = out.with_name(out.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(out, old)
        os.replace(partial, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(partial, out)
    print(f"[export] {info.version} -> {out}", flush=True)
    return info


def load_exported(model_dir: str | Path, device: str | torch.device = "cpu") -> ExportedModel:
    """Load an artifact written by `export_run` in any plain process: (model in eval mode, BatchSpec, ExportInfo)."""
    from recsys.training.config import TrainConfig
    from recsys.training.loop import build_training_model

    d = Path(model_dir)
    for name in ("model.pt", "config.yaml", "batch_spec.json", "version.json"):
        if not (d / name).exists():
            raise FileNotFoundError(f"{d / name}: missing; not a model exported by `recsys export`")
    info_d = json.loads((d / "version.json").read_text())
    if info_d.get("format_version") != FORMAT_VERSION:
        raise ConfigError(f"{d / 'version.json'}: format_version {info_d.get('format_version')} is not {FORMAT_VERSION}")
    cfg = validate(TrainConfig, read_yaml(d / "config.yaml"), str(d / "config.yaml"))
    spec = _spec_from_json(json.loads((d / "batch_spec.json").read_text()))
    model = build_training_model(cfg.model_copy(update={"activation_checkpointing": False}), spec)
    state = torch.load(d / "model.pt", map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    model.to(device).eval()
    return ExportedModel(model=model, spec=spec, info=ExportInfo(**info_d))
