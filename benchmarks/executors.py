"""Where jobs run: in this process, in N local worker processes, or on a Ray cluster.

Every executor calls :func:`benchmarks.runner.execute_job`, which writes the job's result file
itself, so results land in the same store whatever ran them and a run can move between executors
and resume. Each executor yields one summary row per finished job.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, Iterator

EXECUTORS = ("local", "ray")


def run_local(jobs: list, ctx: Any, workers: int = 1, fn: Callable | None = None) -> Iterator[dict[str, Any]]:
    """Sequential when ``workers <= 1``; else a spawn-context process pool whose workers each get
    cores // workers torch threads (no oversubscription). ``fn(job, ctx)`` runs one job (default
    :func:`benchmarks.runner.execute_job`; ``reproduce`` passes its own)."""
    from benchmarks.engine import configure_threads

    if fn is None:
        from benchmarks.runner import execute_job as fn
    execute_job = fn
    if workers <= 1 or len(jobs) <= 1:
        for job in jobs:
            yield execute_job(job, ctx)
        return
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed

    with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"),
                             initializer=configure_threads, initargs=(workers,)) as ex:
        futs = [ex.submit(execute_job, j, ctx) for j in jobs]
        for fut in as_completed(futs):
            yield fut.result()


def run_jobs(jobs: list, ctx: Any, executor: str = "local", workers: int = 1, **options: Any) -> Iterable[dict]:
    if executor == "local":
        return run_local(jobs, ctx, workers)
    if executor == "ray":
        from benchmarks import ray_executor  # optional extra "distributed"

        return ray_executor.run_ray(jobs, ctx, **options)
    raise ValueError(f"unknown executor {executor!r}; choose from {EXECUTORS}")
