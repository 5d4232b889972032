"""Run jobs on a Ray cluster (``run --executor ray``; optional extra ``distributed``).

    pip install -e ".[distributed]"
    python -m benchmarks run --executor ray                          # a local Ray instance on this machine
    ray start --head  (on the head node), ray start --address HEAD:6379  (on the others), then
    python -m benchmarks run --executor ray --ray-address auto --gpus-per-job 0.25

``ray.init(address=...)`` joins an existing cluster (``--ray-address`` or ``$RAY_ADDRESS``), otherwise
a local instance is started and shut down at the end. Each job is one Ray task that declares its
needs: ``cpus_per_job`` CPUs (its torch threads) and ``gpus_per_job`` of a GPU, so small MIL jobs
can share one GPU (``--gpus-per-job 0.25`` puts four on a GPU; 0 keeps a job on the CPU).

A task gets the job, the picklable run context and the text of its split CSV, runs
:func:`benchmarks.runner.execute_job` in a scratch folder of its node and returns the result; the
driver writes it into the run's result store (``<run>/jobs/<hash>.json``), exactly where the local
executor writes it. So worker nodes need no shared file system for results, and a run can move
between executors and resume. The data must be readable on every node (simulated cohorts are
regenerated from their seed; feature folders must be on a shared path).
"""
from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import traceback
from pathlib import Path
from typing import Any, Iterator

INSTALL_HINT = "the Ray executor needs Ray: pip install -e \".[distributed]\" (or pip install ray)"


def _scratch_run_dir(job: Any, split_csv: str) -> Path:
    """A per-split scratch run folder on this node holding the job's split CSV (written atomically)."""
    from benchmarks.runner import split_path

    root = Path(tempfile.gettempdir()) / "momkd_bench_ray" / f"{job.split_hash or 'split'}_{job.task}_{job.seed}"
    target = split_path(root, job.task, job.seed)
    if not target.exists() or target.read_text() != split_csv:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            f.write(split_csv)
        os.replace(tmp, target)
    return root


def execute_remote(job: Any, ctx: Any, split_csv: str, threads: int) -> tuple[dict[str, Any], dict | None]:
    """Body of one Ray task: run the job in a scratch folder; return (summary row, result file)."""
    import torch

    from benchmarks.jobs import ResultStore
    from benchmarks.runner import execute_job

    torch.set_num_threads(max(1, threads))
    root = _scratch_run_dir(job, split_csv)
    local = dataclasses.replace(ctx, run_dir=str(root))
    row = execute_job(job, local)
    result = None
    if row["status"] == "ok":
        path = ResultStore(root).path(job)
        result = json.loads(path.read_text())
        path.unlink(missing_ok=True)
    return row, result


def run_ray(jobs: list, ctx: Any, address: str | None = None, gpus_per_job: float = 0.0,
            cpus_per_job: float = 1.0, **_: Any) -> Iterator[dict[str, Any]]:
    """Yield one summary row per finished job (as :func:`benchmarks.executors.run_local`)."""
    try:
        import ray
    except ImportError:
        raise ValueError(INSTALL_HINT) from None
    if gpus_per_job < 0 or cpus_per_job <= 0:
        raise ValueError(f"--gpus-per-job must be >= 0 and cpus per job > 0, got {gpus_per_job}, {cpus_per_job}")
    return _run(ray, jobs, ctx, address, float(gpus_per_job), float(cpus_per_job))


def _run(ray: Any, jobs: list, ctx: Any, address: str | None, gpus: float, cpus: float) -> Iterator[dict]:
    from benchmarks.jobs import ResultStore, atomic_write_json
    from benchmarks.runner import split_path

    if not jobs:
        return
    started = False
    if not ray.is_initialized():
        kw: dict[str, Any] = {"address": address, "logging_level": "WARNING", "log_to_driver": False}
        if address is None and not os.environ.get("RAY_ADDRESS"):  # a local instance on this machine
            kw.update(include_dashboard=False, num_cpus=os.cpu_count() or 1)
        ray.init(**kw)
        started = True
    try:
        store = ResultStore(Path(ctx.run_dir))
        splits = {(j.task, j.seed): split_path(Path(ctx.run_dir), j.task, j.seed).read_text() for j in jobs}
        task = ray.remote(num_cpus=cpus, num_gpus=gpus, max_retries=1)(execute_remote)
        ctx_ref = ray.put(ctx)
        threads = max(1, int(cpus))
        pending = {task.remote(j, ctx_ref, splits[(j.task, j.seed)], threads): j for j in jobs}
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                job = pending.pop(ref)
                try:
                    row, result = ray.get(ref)
                except Exception as e:  # the task or its worker died; reported like a failed job
                    row, result = {"hash": job.hash, "label": job.label, "status": "failed",
                                   "error": f"Ray task failed: {type(e).__name__}: {e}",
                                   "traceback": traceback.format_exc(), "seconds": float("nan")}, None
                if result is not None:
                    atomic_write_json(store.path(job), result)
                elif row["status"] != "ok":  # the failed record the tables show (retried next run)
                    store.save_failure(job, row["error"], row.get("traceback", ""))
                yield row
    finally:
        if started:
            ray.shutdown()
