"""Sharding plans for TorchRec embedding tables: planner constraints from config and CPU-capable sharders.

Why a sharder subclass: TorchRec's EmbeddingBagCollectionSharder refuses row-wise / table-row-wise on CPU through
`sharding_types("cpu")`, although the gloo path computes them correctly (STACK.md); returning the CUDA list makes the
planner consider them. data_parallel is removed everywhere: it fails for EmbeddingCollection (sequence tables) on
CPU and would replicate large tables on every worker. The compute kernel is always `fused` (the only model-parallel
kernel on CPU; it is also the one that applies the embedding optimizer inside the backward).
"""
from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torchrec.distributed.embedding import EmbeddingCollectionSharder
from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
from torchrec.distributed.model_parallel import DistributedModelParallel
from torchrec.distributed.planner import EmbeddingShardingPlanner, Topology
from torchrec.distributed.planner.types import ParameterConstraints
from torchrec.distributed.types import ModuleSharder, ShardingPlan, ShardingType
from torchrec.modules.embedding_modules import EmbeddingBagCollection, EmbeddingCollection

from recsys.config import ConfigError
from recsys.training.config import ShardingConfig

_DP = ShardingType.DATA_PARALLEL.value


class CPUCapableEBCSharder(EmbeddingBagCollectionSharder):
    """EBC sharder that offers row-wise/table-row-wise on CPU too (and never data_parallel)."""

    def sharding_types(self, compute_device_type: str) -> list[str]:
        dev = "cuda" if compute_device_type == "cpu" else compute_device_type
        return [t for t in super().sharding_types(dev) if t not in (_DP, ShardingType.GRID_SHARD.value)]


class NoDPECSharder(EmbeddingCollectionSharder):
    """EmbeddingCollection sharder without data_parallel (fails for sequence tables, STACK.md)."""

    def sharding_types(self, compute_device_type: str) -> list[str]:
        return [t for t in super().sharding_types(compute_device_type) if t != _DP]


def make_sharders() -> list[ModuleSharder[nn.Module]]:
    return [NoDPECSharder(), CPUCapableEBCSharder()]


def embedding_tables(model: nn.Module) -> dict[str, tuple[str, Any]]:
    """table name -> ("ec" | "ebc", TorchRec table config), over every embedding module of the model."""
    out: dict[str, tuple[str, Any]] = {}
    for path, mod in model.named_modules():
        if isinstance(mod, EmbeddingCollection):
            kind, tables = "ec", mod.embedding_configs()
        elif isinstance(mod, EmbeddingBagCollection):
            kind, tables = "ebc", mod.embedding_bag_configs()
        else:
            continue
        for t in tables:
            if t.name in out:
                raise ConfigError(f"model: embedding table name {t.name!r} is used twice (second in {path}); table names must be unique")
            out[t.name] = (kind, t)
    return out


def embedding_modules(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, (EmbeddingCollection, EmbeddingBagCollection))]


def constraints(model: nn.Module, cfg: ShardingConfig) -> dict[str, ParameterConstraints]:
    tables = embedding_tables(model)
    unknown = sorted(set(cfg.tables) - set(tables))
    if unknown:
        raise ConfigError(f"sharding.tables: unknown table(s) {unknown}; the model's tables are {sorted(tables)}")
    out = {}
    for name, (kind, _) in tables.items():
        types = list(cfg.tables.get(name, cfg.sharding_types))
        if kind == "ec":
            allowed = NoDPECSharder().sharding_types("cpu")
            bad = [t for t in types if t not in allowed]
            types = [t for t in types if t in allowed]
            if not types:
                where = f"sharding.tables.{name}" if name in cfg.tables else "sharding.sharding_types"
                raise ConfigError(f"{where}: {bad} not supported for sequence table {name!r}; use one of {allowed}")
        out[name] = ParameterConstraints(sharding_types=types, compute_kernels=["fused"])
    return out


def make_plan(
    model: nn.Module,
    cfg: ShardingConfig,
    device: torch.device,
    batch_size: int,
    pg: dist.ProcessGroup | None = None,
) -> ShardingPlan:
    """The TorchRec planner's plan under our constraints, agreed on by all ranks (collective_plan)."""
    pg = pg or dist.GroupMember.WORLD
    topology = Topology(world_size=dist.get_world_size(pg), compute_device=device.type)
    planner = EmbeddingShardingPlanner(topology=topology, batch_size=batch_size, constraints=constraints(model, cfg), debug=False)
    return planner.collective_plan(model, make_sharders(), pg)


def shard(
    model: nn.Module, cfg: ShardingConfig, device: torch.device, batch_size: int, pg: dist.ProcessGroup | None = None
) -> DistributedModelParallel:
    """Wrap `model` (embedding optimizer already applied in backward) in DMP: tables sharded, dense parts DDP."""
    from torchrec.distributed.model_parallel import DefaultDataParallelWrapper

    plan = make_plan(model, cfg, device, batch_size, pg)
    return DistributedModelParallel(
        module=model,
        device=device,
        plan=plan,
        sharders=make_sharders(),
        # static_graph (TorchRec's default) also tolerates dense params a forward never uses (serving-only paths)
        data_parallel_wrapper=DefaultDataParallelWrapper(static_graph=True),
    )


def plan_summary(plan: ShardingPlan) -> dict[str, str]:
    """table -> sharding type (for logs and tests)."""
    out = {}
    for _module, params in plan.plan.items():
        for name, ps in params.items():  # type: ignore[union-attr]
            out[name] = ps.sharding_type
    return out
