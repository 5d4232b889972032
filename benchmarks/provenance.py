"""What a job's result depends on beyond its settings: the code that computes it and the bytes of
its input files.

* :func:`code_digest` hashes the source of a method's module and of every repository module it
  uses (followed through imports), plus the shared training and data pipeline (engine, optimiser,
  protocol, metrics, data readers). Editing an unrelated method or a report module leaves it
  unchanged; editing the engine or the method changes it. The runner stores it in each job result
  and recomputes a finished job whose digest differs (``run --reuse-stale`` reuses and lists them).
* :func:`content_sha256` hashes a file's contents once and caches the digest by (path, size,
  mtime) in ``$MOMKD_CACHE_DIR/file_digests.json`` (default ``results/cache``), so cohort
  fingerprints follow the feature contents, not only their sizes, without rereading unchanged files.
"""
from __future__ import annotations

import functools
import hashlib
import importlib
import json
import os
import sys
import types
from pathlib import Path
from typing import Iterable

REPO = Path(__file__).resolve().parents[1]
#: the shared pipeline every job runs through (training, optimiser, splits, metrics, data reading)
PIPELINE = ("benchmarks.engine", "benchmarks.optim", "benchmarks.protocol", "benchmarks.metrics",
            "benchmarks.batching", "benchmarks.data.cohort", "benchmarks.data.readers", "benchmarks.data.normalize",
            "benchmarks.data.omics", "benchmarks.data.bag", "benchmarks.data.simulated", "benchmarks.data.milcsv",
            "benchmarks.data.validate", "momkd.recipe", "momkd.contract")
#: modules whose edits never change a result (reporting, orchestration, CLI)
_IGNORED = ("benchmarks.report", "benchmarks.figures", "benchmarks.tracking", "benchmarks.runner",
            "benchmarks.registry", "benchmarks.__main__", "benchmarks.tuning", "benchmarks.reproduce",
            "benchmarks.curves", "benchmarks.stats", "benchmarks.executors", "benchmarks.ray_executor",
            "benchmarks.provenance", "benchmarks.jobs", "benchmarks.prepare", "benchmarks.simcheck",
            "benchmarks.perf", "benchmarks.literature", "benchmarks.suites", "benchmarks.recipes")


def _repo_file(mod: types.ModuleType) -> Path | None:
    f = getattr(mod, "__file__", None)
    if not f:
        return None
    p = Path(f).resolve()
    return p if REPO in p.parents and "tests" not in p.relative_to(REPO).parts[:1] else None


def module_closure(names: Iterable[str]) -> list[str]:
    """The repository modules ``names`` use, followed through their globals (imported modules and
    the modules that define imported names)."""
    seen: set[str] = set()
    todo = list(names)
    while todo:
        name = todo.pop()
        if name in seen or name in _IGNORED:
            continue
        try:
            mod = importlib.import_module(name)
        except ImportError:
            continue
        if _repo_file(mod) is None:
            continue
        seen.add(name)
        for v in list(vars(mod).values()):
            ref = v.__name__ if isinstance(v, types.ModuleType) else getattr(v, "__module__", None)
            if isinstance(ref, str) and ref not in seen and ref in sys.modules \
                    and _repo_file(sys.modules[ref]) is not None:
                todo.append(ref)
    return sorted(seen)


@functools.lru_cache(maxsize=None)
def _source_sha(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@functools.lru_cache(maxsize=None)
def code_digest(build_module: str, extra: tuple[str, ...] = ()) -> str:
    """Digest of the code behind one method's results: its module closure plus the pipeline's
    (and ``extra`` modules: ``reproduce`` adds the literature protocols' fold values)."""
    mods = module_closure([build_module, *PIPELINE, *extra])
    h = hashlib.sha256()
    for name in mods:
        f = _repo_file(sys.modules[name])
        h.update(f"{name}\0{_source_sha(str(f))}\0".encode())
    return h.hexdigest()[:16]


def method_code_digest(method: str, extra: tuple[str, ...] = ()) -> str:
    """Digest of the code behind a registered method's results: its build module's closure."""
    from benchmarks import registry

    build = registry.get(method).build
    return code_digest(build.partition(":")[0] if isinstance(build, str) else build.__module__, extra)


def code_modules(build_module: str) -> list[str]:
    """The modules :func:`code_digest` covers (for messages and the README)."""
    return module_closure([build_module, *PIPELINE])


# ------------------------------------------------------------------------------------------
# File contents, hashed once
# ------------------------------------------------------------------------------------------
def _cache_path() -> Path:
    return Path(os.environ.get("MOMKD_CACHE_DIR", "results/cache")) / "file_digests.json"


@functools.lru_cache(maxsize=1)
def _load_cache(path: str) -> dict[str, str]:
    try:
        return dict(json.loads(Path(path).read_text()))
    except (OSError, ValueError, TypeError):
        return {}


def content_sha256(path: str | os.PathLike, cache: dict[str, str] | None = None) -> str:
    """SHA-256 (16 hex digits) of a file's bytes, cached by (absolute path, size, mtime)."""
    p = Path(path).resolve()
    st = p.stat()
    key = f"{p}|{st.st_size}|{st.st_mtime_ns}"
    cache = _load_cache(str(_cache_path())) if cache is None else cache
    if key not in cache:
        h = hashlib.sha256()
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        cache[key] = h.hexdigest()[:16]
    return cache[key]


def contents_fingerprint(paths: Iterable[str | os.PathLike]) -> list[str]:
    """:func:`content_sha256` of many files; new digests are saved to the cache file (best effort)."""
    cpath = _cache_path()
    cache = _load_cache(str(cpath))
    n0 = len(cache)
    out = [content_sha256(p, cache) for p in paths]
    if len(cache) != n0:
        try:
            from benchmarks.jobs import atomic_write_json

            atomic_write_json(cpath, cache)
        except OSError:
            pass  # a read-only cache folder only costs rehashing next time
    return out
