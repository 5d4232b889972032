"""Where a cohort's features live during a run: in each process's memory, or in one memory-mapped
feature store that every worker shares (issue #19, item 1).

Every process that loads a cohort in memory holds its own copy of the features (spawned workers
share nothing, and the parent holds one more for planning). At paper scale (about 1,100 slides of
1-6k patches x 1,536-d, 19 GB in float32) two workers and the parent would need 56 GB. So before
anything is loaded the run estimates the cohort's float32 size from metadata only (h5 dataset
shapes, .pt file sizes, the simulator's patch counts) and compares ``size x copies`` with a
memory budget (``--memory-budget``, default half of the memory available at start). A cohort that
fits stays in memory (fastest); one that does not is written once to a
:class:`~benchmarks.data.store.FeatureStore` (float16 unless ``--feature-dtype float32``) and
memory-mapped by every process: its pages live in the OS page cache, shared and evictable, so a
cohort larger than RAM streams from disk instead of being killed.
"""
from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass
from pathlib import Path

from benchmarks.data.cohort import CohortSource

BUDGET_FRACTION = 0.5  # of the memory available when the run starts


def available_memory() -> int:
    """Bytes of memory available now (``MemAvailable``: free plus reclaimable page cache)."""
    from benchmarks.memprobe import meminfo

    try:
        return meminfo()["MemAvailable"]
    except (OSError, KeyError):  # not Linux
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def parse_bytes(text: str | float | int) -> int:
    """``"12"`` or ``"12GB"`` (GB = 2**30 here, as ``free -g``), ``"900MB"``, ``"1.5T"`` -> bytes."""
    if isinstance(text, (int, float)):
        return int(float(text) * 2**30)
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kmgt]?)i?b?\s*", str(text).lower())
    if not m:
        raise ValueError(f"--memory-budget: {text!r} is not a size (expected e.g. 12GB, 900MB or 12)")
    unit = {"k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40, "": 2**30}[m.group(2)]
    return int(float(m.group(1)) * unit)


def process_copies(workers: int) -> int:
    """Processes that hold a loaded cohort: the parent alone, or the parent plus each worker."""
    return 1 if workers <= 1 else workers + 1


def estimate_feature_bytes(src: CohortSource) -> int | None:
    """The cohort's features in float32, from metadata only; ``None`` where that size is small by
    construction (eager simulated presets, the classic MIL CSVs) or unknown."""
    if src.kind == "simulated":
        from benchmarks.data import simulated as sim

        cfg = sim.SimConfig.preset(src.scale)
        if not cfg.lazy:
            return None
        cohort = sim.simulate_external(cfg, seed=src.seed) if src.external else sim.simulate(cfg, seed=src.seed)
        return int(cohort.source.slides["n_patches"].sum()) * cfg.feature_dim * 4
    if src.kind == "files" and src.manifest and src.features_dir:
        import pandas as pd

        from benchmarks.data.readers import locate_feature_files

        try:
            ids = pd.read_csv(src.manifest, usecols=["slide_id"])["slide_id"].astype(str)
            paths, _ = locate_feature_files(src.features_dir, ids)
        except Exception:  # noqa: BLE001 - a bad manifest: the loader reports it, with its full message
            return None
        return sum(_file_feature_bytes(p) for p in paths.values())
    return None


def _file_feature_bytes(path: Path) -> int:
    if path.suffix == ".h5":
        import h5py

        from benchmarks.data.readers import FEATURE_KEYS

        try:
            with h5py.File(path, "r") as f:
                for key in FEATURE_KEYS:
                    if key in f:
                        n = 1
                        for s in f[key].shape:
                            n *= int(s)
                        return 4 * n
        except OSError:
            pass  # unreadable: the loader reports it
    return path.stat().st_size


@dataclass(frozen=True)
class StoragePlan:
    """The decision and what it rests on (printed once, recorded in ``summary.json``)."""

    store: bool
    dtype: str
    feature_bytes: int | None
    copies: int
    budget: int
    forced: bool = False

    def describe(self, name: str) -> str:
        gb = lambda b: f"{b / 2**30:.1f} GB"  # noqa: E731
        if self.feature_bytes is None:
            return f"{name}: features in memory ({self.dtype})"
        size = f"{gb(self.feature_bytes)} of float32 features"
        if not self.store:
            return (f"{name}: {size} x {self.copies} process(es) fits the memory budget {gb(self.budget)}: "
                    f"kept in memory ({self.dtype})")
        why = "--feature-store" if self.forced else (f"x {self.copies} process(es) exceeds the memory budget "
                                                     f"{gb(self.budget)}")
        disk = self.feature_bytes // (2 if self.dtype == "float16" else 1)
        return (f"{name}: {size} {why}: one memory-mapped {self.dtype} feature store ({gb(disk)} on disk, "
                "written once, then shared by every worker through the page cache)")


def plan_storage(src: CohortSource, workers: int, budget: int | None = None, force_store: bool = False,
                 dtype: str | None = None) -> tuple[CohortSource, StoragePlan]:
    """``src`` with ``feature_store``/``feature_dtype`` decided, and the plan behind it."""
    budget = int(budget if budget is not None else BUDGET_FRACTION * available_memory())
    size = estimate_feature_bytes(src) if src.kind in ("simulated", "files") else None
    copies = process_copies(workers)
    store = force_store or (size is not None and size * copies > budget)
    if src.kind not in ("simulated", "files"):
        store = False
    chosen = dtype or ("float16" if store else "float32")
    plan = StoragePlan(store=store, dtype=chosen, feature_bytes=size, copies=copies, budget=budget,
                       forced=force_store)
    return dataclasses.replace(src, feature_store=store, feature_dtype=chosen), plan
