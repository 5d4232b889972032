"""``Job`` (one model trained and scored on one fold) and the result store.

A job's hash covers everything that changes its result (method, resolved hyper-parameters,
task, fold, seed, data fingerprint, protocol, split, the resolved training recipe), and names its result file
``<run>/jobs/<hash>.json``. Grid and variant names are labels, not part of the hash, so a job
shared by two grids (e.g. MoMKD full in ``cv`` and ``ablation``) runs once. Files are written
atomically (temp file + rename): a killed run loses at most the jobs in flight.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator


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

    @property
    def hash(self) -> str:
        key = {"suite": self.suite, "task": self.task, "method": self.method, "fold": self.fold,
               "seed": self.seed, "hparams": self.hparams, "data": self.data_fingerprint,
               "protocol": self.protocol_hash, "split": self.split_hash, "recipe": self.recipe,
               "train": self.train}
        return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]

    @property
    def label(self) -> str:
        return f"{self.method}/{self.variant} {self.task} fold {self.fold} seed {self.seed}"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "hash": self.hash}


def atomic_write_json(path: Path, obj: Any) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=1, default=_jsonable)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; results are meant to be shared
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

    def done(self, job: Job) -> bool:
        p = self.path(job)
        if not p.exists():
            return False
        try:
            return json.loads(p.read_text()).get("status") == "ok"
        except (json.JSONDecodeError, OSError):
            return False  # a truncated file is recomputed

    def save(self, job: Job, result: dict[str, Any]) -> Path:
        p = self.path(job)
        atomic_write_json(p, {"job": job.to_dict(), **result})
        return p

    def load(self, job: Job) -> dict[str, Any]:
        return json.loads(self.path(job).read_text())

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for p in sorted(self.dir.glob("*.json")):
            try:
                yield json.loads(p.read_text())
            except json.JSONDecodeError:
                continue
