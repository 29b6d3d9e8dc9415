"""Optimizers: the fused TorchRec embedding optimizer, the dense optimizer (AdamW or Adam++), the lr schedule.

- Embedding tables are updated inside the backward by FBGEMM (`apply_optimizer_in_backward` before DMP shards the
  model): no dense gradient of a table is ever materialised. On CPU only SGD / Adagrad / row-wise Adagrad exist.
- Dense parameters (MLPs, attention, non-TorchRec embeddings such as positions) use AdamW or Adam++; DMP wraps them
  in DDP so their gradients are all-reduced.
- The warmup + cosine schedule scales the dense learning rate; the embedding learning rate stays constant (the
  Adagrad family already decays its effective step per row).

Adam++ (Tao et al., arXiv 2412.19444, "Towards Simple and Provable Parameter-Free Adaptive Gradient Methods"),
per parameter group with d = its number of scalars:
    r_t = ||theta_t - theta_0||_2 / sqrt(d);   eta_t = max(eta_{t-1}, r_t),  eta_0 = lr (the paper's epsilon)
    beta1_t = beta1 * lam^(t-1);   m_t = beta1_t m_{t-1} + (1 - beta1_t) g_t;   v_t = beta2 v_{t-1} + (1 - beta2) g_t^2
    s_t = sqrt((t+1) * max_{t'<=t} v_t')   (amsgrad=True, the paper's case 2; else sqrt((t+1) v_t))
    theta_{t+1} = theta_t - eta_t * m_t / (delta + s_t)
The schedule multiplies eta_t by lr / initial_lr (1 without a schedule); weight decay is decoupled (scaled by eta_t).
"""
from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from recsys.training.config import OptimizerConfig


class AdamPP(Optimizer):
    """Adam++: parameter-free Adam whose step size is the running max of the normalised distance travelled."""

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        lam: float = 1.0,
        delta: float = 1e-8,
        weight_decay: float = 0.0,
        amsgrad: bool = True,
    ):
        if lr <= 0:
            raise ValueError(f"lr (eta_0) must be > 0, got {lr}")
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise ValueError(f"betas must be in [0, 1), got {betas}")
        defaults = dict(lr=lr, betas=betas, lam=lam, delta=delta, weight_decay=weight_decay, amsgrad=amsgrad, eta=None, step=0)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            beta1, beta2 = group["betas"]
            t = group["step"] + 1
            group["step"] = t
            # eta_t from the distance travelled so far (theta_t vs theta_0), over the whole group
            sq, d = torch.zeros((), dtype=torch.float64), 0
            for p in group["params"]:
                st = self.state[p]
                if "x0" not in st:
                    st["x0"] = p.detach().clone()
                sq += (p.detach().double() - st["x0"].double()).pow(2).sum().cpu()
                d += p.numel()
            r = math.sqrt(float(sq)) / math.sqrt(max(d, 1))
            prev = group["eta"] if group["eta"] is not None else group.get("initial_lr", group["lr"])
            eta = max(prev, r)
            group["eta"] = eta
            scale = group["lr"] / group.get("initial_lr", group["lr"])
            step_size = eta * scale
            beta1_t = beta1 * group["lam"] ** (t - 1)
            for p in params:
                g = p.grad
                st = self.state[p]
                if "m" not in st:
                    st["m"] = torch.zeros_like(p)
                    st["v"] = torch.zeros_like(p)
                    if group["amsgrad"]:
                        st["vmax"] = torch.zeros_like(p)
                m, v = st["m"], st["v"]
                m.mul_(beta1_t).add_(g, alpha=1 - beta1_t)
                v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
                vv = torch.maximum(st["vmax"], v, out=st["vmax"]) if group["amsgrad"] else v
                denom = (vv * t).sqrt_().add_(group["delta"])
                if group["weight_decay"]:
                    p.mul_(1 - step_size * group["weight_decay"])
                p.addcdiv_(m, denom, value=-step_size)
        return loss


def embedding_optimizer_class(name: str) -> type[Optimizer]:
    from torchrec.optim.rowwise_adagrad import RowWiseAdagrad

    return {"rowwise_adagrad": RowWiseAdagrad, "adagrad": torch.optim.Adagrad, "sgd": torch.optim.SGD, "adam": torch.optim.Adam}[name]


def apply_embedding_optimizer(model: nn.Module, cfg: OptimizerConfig) -> None:
    """Register the fused optimizer on every TorchRec table (must run before DistributedModelParallel)."""
    from torchrec.optim.apply_optimizer_in_backward import apply_optimizer_in_backward

    from recsys.training.sharding import embedding_modules

    params = [p for m in embedding_modules(model) for p in m.parameters()]
    if params:
        apply_optimizer_in_backward(embedding_optimizer_class(cfg.embedding), params, {"lr": cfg.embedding_lr})


def make_dense_optimizer(params: list[torch.Tensor], cfg: OptimizerConfig) -> Optimizer:
    if cfg.dense == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    return AdamPP(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)


def clip_dense_gradients(dense: Optimizer | None, max_norm: float | None) -> float:
    """Global L2 norm of the dense gradients before clipping; scales them to at most max_norm when it is set.

    Why: a cap bounds rare oversized steps (ADS's loss spikes at Adam beta2 0.999: benchmarks/QUALITY.md, clipping rows;
    the shipped configs avoid them with beta2 0.99 instead), and the logged norm is how such a step shows in
    metrics.jsonl. Embedding tables are not here:
    FBGEMM applies their update inside the backward, so their gradients never materialise. Under DDP the dense
    gradients are already all-reduced, so every rank computes the same norm and the same scale.
    """
    params = [p for g in (dense.param_groups if dense is not None else []) for p in g["params"] if p.grad is not None]
    if not params:
        return 0.0
    norm = torch.nn.utils.get_total_norm([p.grad for p in params])
    if max_norm is not None:
        torch.nn.utils.clip_grads_with_norm_(params, max_norm, norm)
    return float(norm)


def lr_factor(step: int, cfg: OptimizerConfig, total_steps: int) -> float:
    """Linear warmup to 1, then cosine to min_lr_ratio at total_steps (constant schedule: warmup then 1)."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return 1.0
    span = max(total_steps - cfg.warmup_steps, 1)
    progress = min(max(step - cfg.warmup_steps, 0) / span, 1.0)
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def make_scheduler(opt: Optimizer, cfg: OptimizerConfig, total_steps: int) -> LambdaLR:
    return LambdaLR(opt, lambda s: lr_factor(s, cfg, total_steps))
