"""The machine block every benchmark prints and writes: platform, cores, versions, load average, a note on sharing.

Imports nothing heavy: package versions come from importlib.metadata for the packages the caller names (so a
torch-free benchmark stays torch-free); torch threads and CUDA availability are added only when the caller has
already imported torch.
"""
from __future__ import annotations

import os
import platform
import sys
from importlib import metadata
from typing import Sequence

NOTE = "2 shared cores: other jobs run concurrently; compare ratios within one run"


def version(package: str) -> str | None:
    """Installed version of `package` (distribution name), None when it is not installed."""
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def machine_info(packages: Sequence[str] = ()) -> dict:
    """Machine, versions of `packages` and the load average now (call it at the start of a run)."""
    info = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        **{p: version(p) for p in packages},
    }
    torch = sys.modules.get("torch")
    if torch is not None:
        info["torch_threads"] = torch.get_num_threads()
        info["cuda"] = torch.cuda.is_available()
    info["loadavg_at_start"] = os.getloadavg()
    info["note"] = NOTE
    return info


def format_machine(info: dict) -> str:
    """One line for a benchmark's printed header."""
    skip = {"python", "platform", "processor", "cpu_count", "torch_threads", "cuda", "loadavg_at_start", "note"}
    versions = ", ".join(f"{k} {v}" for k, v in info.items() if k not in skip)
    parts = [f"{info['platform']} ({info['processor']}), {info['cpu_count']} cores", f"python {info['python']}"]
    parts += [versions] if versions else []
    if "torch_threads" in info:
        parts.append(f"torch threads {info['torch_threads']}, cuda {info['cuda']}")
    parts.append("load average " + " ".join(f"{x:.2f}" for x in info["loadavg_at_start"]))
    return "; ".join(parts) + f" ({info['note']})"
