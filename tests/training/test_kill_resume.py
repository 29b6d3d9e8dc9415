"""Kill the `recsys train` driver (SIGKILL) mid-run on 2 Ray workers, clean up exactly that run's processes, resume
with --resume: the run reaches the same final step and its loss curve continues from the checkpoint step."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from recsys.training.checkpoint import latest_checkpoint, read_meta

ROOT = Path(__file__).resolve().parents[2]
RECSYS = str(Path(sys.executable).with_name("recsys"))
EPOCHS, PER_EPOCH = 6, 28  # 3600 train rows / (2 workers x 64)
TOTAL = EPOCHS * PER_EPOCH


def _alive(procs: list[psutil.Process]) -> list[psutil.Process]:
    out = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except psutil.NoSuchProcess:
            pass
    return out


def _reap(procs: list[psutil.Process], grace_s: float = 10.0) -> list[str]:
    """Wait for this run's processes to exit; SIGKILL (by PID) whatever outlives the grace period."""
    deadline = time.time() + grace_s
    while _alive(procs) and time.time() < deadline:
        time.sleep(0.5)
    survivors = _alive(procs)
    names = []
    for p in survivors:
        try:
            names.append(p.name())
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(survivors, timeout=10)
    return names


def _train_records(run: Path) -> list[dict]:
    return [r for r in (json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()) if r["kind"] == "train"]


@pytest.mark.slow
def test_sigkill_driver_then_resume(train_data, tmp_path):
    run = tmp_path / "run"
    args = ["--data", str(train_data), "--out", str(run), "--workers", "2"]
    sets = ["--set", "data.batch_size=64", "--set", f"epochs={EPOCHS}", "--set", "checkpoint_every_steps=20",
            "--set", "log_every_steps=1", "--set", "data.max_len=16", "--set", "model.embedding.dim=16"]
    env = {**os.environ, "RAY_DEDUP_LOGS": "0"}
    with open(tmp_path / "first.log", "w") as log:
        driver = subprocess.Popen([RECSYS, "train", "--config", "configs/pooling.yaml", *args, *sets], cwd=ROOT,
                                  stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    tree: list[psutil.Process] = []
    t0 = time.time()
    try:
        deadline = time.time() + 240
        while latest_checkpoint(run) is None:
            assert driver.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
            assert time.time() < deadline, "no checkpoint within 240 s"
            time.sleep(0.1)
        tree = psutil.Process(driver.pid).children(recursive=True)
        assert any("raylet" in p.name() for p in tree), [p.name() for p in tree]
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait(timeout=30)
    finally:
        if driver.poll() is None:
            driver.kill()
        survivors = _reap(tree)
    assert not _alive(tree)
    t_kill = time.time() - t0
    print("killed by the test after the driver died:", survivors)  # Ray's own fate-sharing handles most
    killed_at = read_meta(latest_checkpoint(run))["step"]
    assert 0 < killed_at < TOTAL, "the run finished before it could be killed: make it longer"
    assert not (run / "DONE").exists()
    assert len(list((run / "table_cache").glob("table-*.arrow"))) == 1  # kept for the resume: both ranks mapped it
    before = _train_records(run)

    t1 = time.time()
    seen: dict[int, psutil.Process] = {}
    names: dict[int, str] = {}
    with open(tmp_path / "resume.log", "w") as log:
        second = subprocess.Popen([RECSYS, "train", "--resume", *args], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            while second.poll() is None:  # remember every process the resumed run starts (Ray's included)
                try:
                    for c in psutil.Process(second.pid).children(recursive=True):
                        seen.setdefault(c.pid, c)
                        names[c.pid] = c.name()  # Ray renames its workers after start: keep the latest
                except psutil.Error:
                    pass
                assert time.time() - t1 < 400, "resumed run did not finish in 400 s"
                time.sleep(0.5)
        finally:
            if second.poll() is None:
                second.kill()
            stray = _reap(list(seen.values()), grace_s=15)
    print(f"first run killed after {t_kill:.0f}s at step {killed_at}; resume took {time.time() - t1:.0f}s")
    assert second.returncode == 0, (tmp_path / "resume.log").read_text()[-4000:]
    assert {"gcs_server", "raylet"} & set(names.values()), sorted(set(names.values()))  # Ray's processes were tracked
    assert not stray, f"processes the resumed run left behind after a clean exit: {stray}"

    done = json.loads((run / "DONE").read_text())
    assert done == {"step": TOTAL, "total_steps": TOTAL}
    assert not (run / "table_cache").exists()  # removed once the run is done
    resumed = _train_records(run)[len(before):]
    steps = [r["step"] for r in resumed]
    resumed_from = read_meta(latest_checkpoint(run))  # final checkpoint
    assert resumed_from["step"] == TOTAL
    # the resumed curve starts right after the checkpoint the run was killed at (or a later one written by the
    # orphaned workers before they died) and has no gaps up to the end
    assert steps[0] - 1 >= killed_at and steps[0] - 1 in {r["step"] for r in before} | {killed_at}
    assert steps == list(range(steps[0], TOTAL + 1))
    # same data order, weights, optimizer state and RNG: the overlapping steps replay the same losses
    first = {r["step"]: r["loss"] for r in before}
    overlap = [(first[r["step"]], r["loss"]) for r in resumed if r["step"] in first]
    print(f"{len(overlap)} overlapping steps; resumed from step {steps[0] - 1}")
    for a, b in overlap:
        assert abs(a - b) < 1e-4, f"resumed loss {b} differs from the original {a} at the same step"
    evals = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines() if '"eval"' in l]
    assert evals[-1]["final"] and evals[-1]["overall"]["auc"] > 0.7
