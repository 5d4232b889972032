"""Where jobs run: in this process, in N local worker processes, or on a Ray cluster.

Every executor calls :func:`benchmarks.runner.execute_job`, which writes the job's result file
itself, so results land in the same store whatever ran them and a run can move between executors
and resume. Each executor yields one summary row per finished job.
"""
from __future__ import annotations

import os
import signal
import threading
import time
from typing import Any, Callable, Iterable, Iterator

EXECUTORS = ("local", "ray")


def _exit_with(parent: int, every: float = 1.0) -> None:
    """A daemon thread that ends this process when ``parent`` is gone (re-parented: a SIGKILLed
    run, the OOM killer, a scheduler's time limit), so no orphaned worker keeps its memory."""
    def watch() -> None:
        while True:
            time.sleep(every)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, daemon=True, name="exit-with-parent").start()


def init_worker(workers: int, parent: int) -> None:
    """Pool worker set-up: cores // workers torch threads, Ctrl-C left to the parent (which stops
    the pool), exit when the parent dies."""
    from benchmarks.engine import configure_threads

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _exit_with(parent)
    configure_threads(workers)


def stop_pool(ex: Any) -> None:
    """Stop a ProcessPoolExecutor now: cancel queued jobs and terminate the workers (jobs in
    flight are lost; finished ones are on disk)."""
    procs = list(getattr(ex, "_processes", {}).values())  # no public handle on the workers
    ex.shutdown(wait=False, cancel_futures=True)
    for p in procs:
        if p.is_alive():
            p.terminate()
    for p in procs:
        p.join(timeout=5)


def process_pool(workers: int, start_method: str = "spawn") -> Any:
    """A process pool (spawn context by default) whose workers run :func:`init_worker`."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    return ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context(start_method),
                               initializer=init_worker, initargs=(workers, os.getpid()))


def run_local(jobs: list, ctx: Any, workers: int = 1, fn: Callable | None = None) -> Iterator[dict[str, Any]]:
    """Sequential when ``workers <= 1``; else a spawn-context process pool whose workers each get
    cores // workers torch threads (no oversubscription). ``fn(job, ctx)`` runs one job (default
    :func:`benchmarks.runner.execute_job`; ``reproduce`` passes its own). Ctrl-C (or closing the
    generator) stops the workers within seconds."""
    if fn is None:
        from benchmarks.runner import execute_job as fn
    execute_job = fn
    if workers <= 1 or len(jobs) <= 1:
        for job in jobs:
            yield execute_job(job, ctx)
        return
    from concurrent.futures import as_completed

    ex = process_pool(workers)
    try:
        futs = [ex.submit(execute_job, j, ctx) for j in jobs]
        for fut in as_completed(futs):
            yield fut.result()
    except BaseException:  # KeyboardInterrupt, SystemExit from a SIGTERM handler, GeneratorExit
        stop_pool(ex)
        raise
    ex.shutdown(wait=True)


def interrupted(n_done: int, n_todo: int, folder: Any) -> int:
    """Say what an interrupted run kept and how to resume; returns the exit code (128 + SIGINT)."""
    import shlex
    import sys

    cmd = " ".join(shlex.quote(a) for a in ["python", "-m", "benchmarks", *sys.argv[1:]])
    print(f"\ninterrupted: {n_done} of {n_todo} job(s) finished in this invocation; they and every earlier "
          f"finished job are saved in {folder}; the jobs in flight were stopped. Resume with the same "
          f"command: {cmd}", file=sys.stderr)
    return 130


def run_jobs(jobs: list, ctx: Any, executor: str = "local", workers: int = 1, **options: Any) -> Iterable[dict]:
    if executor == "local":
        return run_local(jobs, ctx, workers)
    if executor == "ray":
        from benchmarks import ray_executor  # optional extra "distributed"

        return ray_executor.run_ray(jobs, ctx, **options)
    raise ValueError(f"unknown executor {executor!r}; choose from {EXECUTORS}")
