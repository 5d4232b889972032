"""``Job`` (one model trained and scored on one fold) and the result store.

A job's hash covers everything that changes its result (method, resolved hyper-parameters,
task, fold, seed, data fingerprint, protocol, split, the resolved training recipe), and names its result file
``<run>/jobs/<hash>.json``. Grid and variant names are labels, not part of the hash, so a job
shared by two grids (e.g. MoMKD full in ``cv`` and ``ablation``) runs once. Files are written
atomically (temp file + rename): a killed run loses at most the jobs in flight.

A run records its plan (``<run>/plan.json``: the hash and key of every job it planned). Tables,
statistics, figures and MLflow read exactly those jobs (:func:`load_planned`): other job files in
the folder (an earlier run with other settings) are kept for resuming but never mixed in, and a
planned job that failed, is missing or cannot be read is reported, never averaged away.
"""
from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

from benchmarks.hashing import stable_hash

PLAN_FILE = "plan.json"
#: what identifies a job in a table; two planned jobs with one key would be averaged together
JOB_KEY = ("method", "variant", "task", "fold", "seed")
#: MoMKD's ``default`` variant is its full model (Tables 1-4 call it ``full``)
_DEFAULT_IS = {"momkd": "full"}


def canonical_variant(method: str, variant: str | None) -> str:
    """MoMKD's ``default`` variant is ``full``; ``None`` is ``default``."""
    v = variant or "default"
    return _DEFAULT_IS.get(method, v) if v == "default" else v


@dataclass(frozen=True)
class Job:
    suite: str
    grid: str
    task: str
    method: str
    variant: str
    fold: int
    seed: int
    hparams: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)
    data_fingerprint: str = ""
    protocol_hash: str = ""
    split_hash: str = ""
    recipe: str = "shared"  # "shared" | "official" (benchmarks/recipes.py)
    train: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)  # the resolved Recipe
    params_source: str = ""  # where tuned hyper-parameters came from (``run --params FILE``), else ""
    external_fingerprint: str = ""  # the external cohort this job also scores (Table 2), else ""

    @property
    def hash(self) -> str:
        key = {"suite": self.suite, "task": self.task, "method": self.method, "fold": self.fold,
               "seed": self.seed, "hparams": self.hparams, "data": self.data_fingerprint,
               "protocol": self.protocol_hash, "split": self.split_hash, "recipe": self.recipe,
               "train": self.train}
        if self.external_fingerprint:  # only jobs that score an external cohort carry it
            key["external"] = self.external_fingerprint
        return stable_hash(key)

    @property
    def label(self) -> str:
        return f"{self.method}/{self.variant} {self.task} fold {self.fold} seed {self.seed}"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "hash": self.hash}


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=1, default=_jsonable))


def atomic_write_text(path: Path, text: str) -> None:
    """Write a text file via a temp file + rename: readers never see a partial file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _jsonable(x: Any) -> Any:
    import numpy as np

    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    return str(x)


class ResultStore:
    """``<run_dir>/jobs/<hash>.json``: one finished job per file."""

    def __init__(self, run_dir: Path):
        self.dir = Path(run_dir) / "jobs"

    def path(self, job: Job) -> Path:
        return self.dir / f"{job.hash}.json"

    def finished(self, job: Job) -> dict[str, Any] | None:
        """The job's result if it finished (status ok), else None (missing, failed or truncated)."""
        p = self.path(job)
        if not p.exists():
            return None
        try:
            d = json.loads(p.read_text())
        except (json.JSONDecodeError, OSError):
            return None  # a truncated file is recomputed
        return d if isinstance(d, dict) and d.get("status") == "ok" else None

    def done(self, job: Job) -> bool:
        return self.finished(job) is not None

    def finished_since(self, job: Job, t: float) -> dict[str, Any] | None:
        """The job's finished result if its file was written at or after ``t`` (epoch seconds)."""
        try:
            if self.path(job).stat().st_mtime < t:
                return None
        except FileNotFoundError:
            return None
        return self.finished(job)

    def lock_path(self, job: Job) -> Path:
        return self.dir / f"{job.hash}.lock"

    @contextmanager
    def claim(self, job: Job, since: float, code_digest: str, what: str = "") -> Iterator[dict[str, Any] | None]:
        """Hold the job's lock (benchmarks/locks.py) for the ``with`` block and yield the result
        another run wrote meanwhile (after ``since``, by the same code), or None: compute it then."""
        from benchmarks.locks import file_lock

        with file_lock(self.lock_path(job), what or job.label):
            done = self.finished_since(job, since)
            yield done if done is not None and done.get("code_digest") == code_digest else None

    def partition(self, jobs: Iterable[Job], digests: dict[str, str], force: bool = False) -> tuple[list[Job], list[Job]]:
        """(jobs to run, finished jobs computed by other code than ``digests[method]``)."""
        todo, stale = [], []
        for j in jobs:
            rec = None if force else self.finished(j)
            if rec is None:
                todo.append(j)
            elif rec.get("code_digest") != digests[j.method]:
                stale.append(j)
        return todo, stale

    def save(self, job: Job, result: dict[str, Any]) -> Path:
        p = self.path(job)
        atomic_write_json(p, {"job": job.to_dict(), **result})
        return p

    def save_failure(self, job: Job, error: str, tb: str = "") -> Path:
        """A failed record (status ``failed``, the error and the traceback's last lines): tables show
        the failure; the next run retries the job (:meth:`done` is false)."""
        return self.save(job, {"status": "failed", "error": error, "traceback_tail": tb.strip().splitlines()[-8:]})



# ------------------------------------------------------------------------------------------
# The run's plan
# ------------------------------------------------------------------------------------------
def plan_entry(job: Job) -> dict[str, Any]:
    return {"hash": job.hash, "grid": job.grid, "method": job.method, "variant": job.variant, "task": job.task,
            "fold": int(job.fold), "seed": int(job.seed)}


def write_plan(run_dir: Path, jobs: Iterable[Job], **meta: Any) -> Path:
    """Record the jobs a run planned (``<run>/plan.json``)."""
    return save_plan(run_dir, [plan_entry(j) for j in jobs], **meta)


def save_plan(run_dir: Path, entries: Iterable[dict[str, Any]], **meta: Any) -> Path:
    """Write plan entries (``plan_entry``'s form), once per hash; refuse two jobs with one table key
    (they would be averaged as one cell)."""
    out: list[dict[str, Any]] = []
    keys: dict[tuple, dict[str, Any]] = {}
    seen: set[str] = set()
    for e in entries:
        if e["hash"] in seen:
            continue
        e = {**e, "variant": canonical_variant(e["method"], e.get("variant"))}
        k = tuple(e[c] for c in JOB_KEY)
        if k in keys:
            raise ValueError(f"two planned jobs share (method, variant, task, fold, seed) = {k} with different "
                             f"settings (jobs {keys[k]['hash']} and {e['hash']}); a table would average them")
        keys[k] = e
        seen.add(e["hash"])
        out.append(e)
    path = Path(run_dir) / PLAN_FILE
    atomic_write_json(path, {**meta, "jobs": out})
    return path


def read_plan(run_dir: Path) -> list[dict[str, Any]]:
    """The planned job entries of a run folder; a clear error when the folder has no plan."""
    run_dir = Path(run_dir)
    path = run_dir / PLAN_FILE
    if not path.is_file():
        if not (run_dir / "jobs").is_dir():
            raise FileNotFoundError(f"{run_dir / 'jobs'}: no jobs folder; pass a run directory written by "
                                    "`python -m benchmarks run` (it holds plan.json and jobs/<hash>.json)")
        raise FileNotFoundError(f"{path}: no plan; this folder was not written by this version's `run`, so "
                                "which job files belong to its tables is unknown. Rerun the same `run` command "
                                "with --out pointing here: finished jobs are reused and the plan is recorded.")
    try:
        doc = json.loads(path.read_text())
        entries = list(doc["jobs"])
        for e in entries:
            for k in ("hash",) + JOB_KEY:
                e[k]  # noqa: B018 - presence check
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path}: unreadable plan ({type(e).__name__}: {e}); rerun the `run` command "
                         "with --out pointing here to rewrite it") from e
    return entries


@dataclass
class PlannedJob:
    """One planned job and what its file holds: ``data`` when it finished (status ok), else
    ``problem`` (``missing``, ``failed``, ``unreadable``) and ``detail``."""

    entry: dict[str, Any]
    path: Path
    data: dict[str, Any] | None = None
    problem: str = ""
    detail: str = ""
    raw: bytes = b""  # the file's bytes (MLflow sync digests them)

    @property
    def label(self) -> str:
        e = self.entry
        return f"{e['method']}/{e['variant']} {e['task']} fold {e['fold']} seed {e['seed']}"


def load_planned(run_dir: Path) -> list[PlannedJob]:
    """Every planned job of a run with its result or the reason it has none."""
    run_dir = Path(run_dir)
    out = []
    for e in read_plan(run_dir):
        path = run_dir / "jobs" / f"{e['hash']}.json"
        pj = PlannedJob(e, path)
        if not path.is_file():
            pj.problem, pj.detail = "missing", "no result file (not run yet, interrupted or deleted)"
        else:
            try:
                pj.raw = path.read_bytes()
                d = json.loads(pj.raw)
                if not isinstance(d, dict) or not isinstance(d.get("job"), dict):
                    raise ValueError("not a job result")
                if d["job"].get("hash", e["hash"]) != e["hash"]:
                    raise ValueError(f"holds job {d['job'].get('hash')}, not {e['hash']}")
            except (OSError, ValueError) as err:
                pj.problem, pj.detail = "unreadable", f"{type(err).__name__}: {err}"
            else:
                if d.get("status", "ok") == "ok":
                    pj.data = d
                else:
                    pj.problem = "failed"
                    pj.detail = str(d.get("error") or f"status {d.get('status')!r}")
        out.append(pj)
    return out
