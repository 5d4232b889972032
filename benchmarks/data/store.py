"""Consolidated feature cache: one file per cohort, memory-mapped by every worker (issue #9).

Reading a cohort of TRIDENT/CLAM files costs one h5/pt open and decode per slide; with N local
worker processes each one would read (and hold) the whole cohort. ``FeatureStore.build`` reads each
file once, validates it (the same checks and error messages as the readers), and appends features
(``float16`` by default, or ``float32``) and coordinates to two flat binary files with a JSON index.
Every later load, in any process, memory-maps them: pages are shared through the OS page cache,
nothing is decoded again, and a slide's features are read from disk only when a step touches them.
Models still compute in float32: the engine casts each bag's features per step.

The store lives in ``<cache_dir>/<key>/`` where the key hashes the slide ids, file paths, sizes and
modification times and the dtype: a changed or replaced feature file gives a new store, never stale
features. Problems found while building (NaN, empty bag, wrong key, ...) are kept in the index so a
cached load reports exactly what a fresh read reports.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Iterator, Mapping

import numpy as np

from benchmarks.data.errors import DataError, DataProblem

DTYPES = ("float16", "float32")
FORMAT = 1


def default_cache_dir() -> Path:
    """``$MOMKD_CACHE_DIR`` or ``results/cache`` under the working directory."""
    return Path(os.environ.get("MOMKD_CACHE_DIR", "results/cache")) / "features"


def store_key(paths: Mapping[str, str | os.PathLike], dtype: str) -> str:
    h = hashlib.sha256(f"format{FORMAT}:{dtype}".encode())
    for sid in sorted(paths):
        p = Path(paths[sid])
        st = p.stat()
        h.update(f"\n{sid}\t{p.resolve()}\t{st.st_size}\t{st.st_mtime_ns}".encode())
    return h.hexdigest()[:20]


class FeatureStore(Mapping[str, np.ndarray]):
    """slide_id -> (N, D) memory-mapped features; :meth:`coords` gives (N, 2) float32 or ``None``."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        meta = json.loads((self.root / "index.json").read_text())
        if meta.get("format") != FORMAT:
            raise ValueError(f"{self.root}: feature store format {meta.get('format')} != {FORMAT}; delete the folder")
        self.dtype = np.dtype(meta["dtype"])
        self.dim = int(meta["dim"])
        self.index: dict[str, dict[str, int | bool]] = meta["slides"]
        self.problems = [DataProblem(**p) for p in meta.get("problems", [])]
        n_rows = int(meta["rows"])
        # copy-on-write maps: writable views for torch.from_numpy, pages shared until written (never)
        self._feats = (np.memmap(self.root / "features.bin", dtype=self.dtype, mode="c", shape=(n_rows, self.dim))
                       if n_rows else np.zeros((0, self.dim), self.dtype))
        self._coords = (np.memmap(self.root / "coords.bin", dtype=np.float32, mode="c", shape=(n_rows, 2))
                        if n_rows else np.zeros((0, 2), np.float32))

    def __getitem__(self, slide_id: str) -> np.ndarray:
        e = self.index[slide_id]
        return self._feats[e["start"]:e["start"] + e["n"]]

    def coords(self, slide_id: str) -> np.ndarray | None:
        e = self.index[slide_id]
        return self._coords[e["start"]:e["start"] + e["n"]] if e["has_coords"] else None

    def mappings(self) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray | None]]:
        """({slide_id: features}, {slide_id: coords or None}) as memory-mapped views (no copy)."""
        return {sid: self[sid] for sid in self}, {sid: self.coords(sid) for sid in self}

    def __iter__(self) -> Iterator[str]:
        return iter(self.index)

    def __len__(self) -> int:
        return len(self.index)

    @property
    def nbytes(self) -> int:
        return int(sum(e["n"] for e in self.index.values())) * self.dim * self.dtype.itemsize

    @classmethod
    def open_or_build(cls, paths: Mapping[str, str | os.PathLike], dtype: str = "float16",
                      cache_dir: str | os.PathLike | None = None, progress: bool = True) -> "FeatureStore | None":
        """The store for exactly these files, built on first use (atomically: a killed build leaves
        no half store behind, and concurrent builders agree on the result). ``None`` when the files
        disagree on the feature dimension: the caller reads them directly and reports the odd slides."""
        from benchmarks.data import readers

        loaders = {sid: functools.partial(readers.read_bag_file, paths[sid], slide_id=sid) for sid in paths}
        return cls.open_or_write(store_key(paths, dtype), loaders, dtype, cache_dir, progress,
                                 files={s: str(paths[s]) for s in sorted(paths)}, what="building feature store")

    @classmethod
    def open_or_write(cls, key: str, loaders: Mapping[str, Callable[[], tuple[np.ndarray, np.ndarray | None]]],
                      dtype: str = "float16", cache_dir: str | os.PathLike | None = None, progress: bool = True,
                      files: Mapping[str, str] | None = None, what: str = "building feature store"
                      ) -> "FeatureStore | None":
        """The store named ``key`` (which must hash everything the features depend on), written on
        first use from ``loaders`` (slide_id -> () -> (features, coords or None); a ``DataError``
        is recorded as the slide's problems). Feature files use :meth:`open_or_build`; the
        simulated ``paper`` cohort materialises its generated slides here once."""
        if dtype not in DTYPES:
            raise ValueError(f"feature store dtype must be one of {DTYPES}, got {dtype!r}")
        root = Path(cache_dir or default_cache_dir()) / key
        if (root / "index.json").is_file():
            return cls(root)
        root.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=root.name + ".", dir=root.parent))
        try:
            if not cls._write(loaders, tmp, np.dtype(dtype), progress, files or {}, what):
                return None
            try:
                os.replace(tmp, root)
            except OSError:  # another process finished first: use its store
                if not (root / "index.json").is_file():
                    raise
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        return cls(root)

    @staticmethod
    def _write(loaders: Mapping[str, Callable[[], tuple[np.ndarray, np.ndarray | None]]], root: Path,
               dtype: np.dtype, progress: bool, files: Mapping[str, str], what: str) -> bool:
        from tqdm.auto import tqdm

        slides: dict[str, dict[str, int | bool]] = {}
        problems: list[DataProblem] = []
        dim, rows = None, 0
        with open(root / "features.bin", "wb") as ff, open(root / "coords.bin", "wb") as fc:
            for sid in tqdm(sorted(loaders), desc=what, unit="slide", leave=False,
                            disable=True if not progress or len(loaders) < 50 else None):  # None: a terminal only
                try:
                    feats, xy = loaders[sid]()
                except DataError as e:
                    problems.extend(e.problems)
                    continue
                if dim is None:
                    dim = int(feats.shape[1])
                if feats.shape[1] != dim:  # mixed dims: the caller reads the files instead and reports them
                    return False
                ff.write(np.ascontiguousarray(feats, dtype=dtype).tobytes())
                fc.write(np.ascontiguousarray(xy if xy is not None else np.zeros((len(feats), 2)),
                                              dtype=np.float32).tobytes())
                slides[sid] = {"start": rows, "n": int(feats.shape[0]), "dim": dim, "has_coords": xy is not None}
                rows += int(feats.shape[0])
        meta = {"format": FORMAT, "dtype": dtype.name, "dim": dim or 0, "rows": rows, "slides": slides,
                "problems": [asdict(p) for p in problems], "files": dict(files)}
        (root / "index.json").write_text(json.dumps(meta))
        return True
