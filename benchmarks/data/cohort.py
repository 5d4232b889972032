"""``Cohort``: a manifest plus a bag source (simulated or feature files) and optional omics.

A cohort is described by a picklable :class:`CohortSource` (what worker processes receive) and
loaded once per process (:func:`load_cohort` caches it), so bags are read once and kept in memory:
features are never re-read per epoch and each slide's kNN graph is built once.
"""
from __future__ import annotations

import functools
import hashlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd
import torch

from benchmarks.hashing import stable_hash
from benchmarks.data.bag import Bag

_CACHE: dict[str, "Cohort"] = {}


@dataclass(frozen=True)
class CohortSource:
    """How to obtain a cohort. ``kind`` is ``simulated``, ``files`` or ``milcsv``."""

    kind: str = "simulated"
    name: str = "tcga_brca"
    scale: str = "small"  # simulated
    seed: int = 0  # simulated
    external: bool = False  # simulated: the second site
    manifest: str | None = None  # files
    features_dir: str | None = None  # files
    omics: str | None = None  # files (optional)
    label_maps: tuple[tuple[str, tuple[tuple[str, int], ...]], ...] = ()  # files: column -> raw -> class
    skip_bad_slides: bool = False
    feature_dtype: str = "float32"  # storage dtype in memory ("float16" halves it; cast per step)
    feature_store: bool = False  # files: memory-map one consolidated cache per cohort (data/store.py)
    dataset: str | None = None  # milcsv: data set of the mil package (benchmarks/data/milcsv.py)
    task: str = "label"  # milcsv: name of the label column
    feature_transform: str = "none"  # milcsv: fixed element-wise feature map ("none" | "signed_log1p")

    def key(self) -> str:
        return stable_hash(asdict(self))


@dataclass
class Cohort:
    name: str
    manifest: pd.DataFrame  # slide_id, case_id, site, one Int64 column per task
    features: Mapping[str, Any]  # slide_id -> (N, D) array/tensor (or a lazy mapping)
    coords: Mapping[str, Any] | None
    omics: pd.DataFrame | None  # index case_id
    fingerprint: str
    source: CohortSource
    skipped: list[Any] = field(default_factory=list)  # DataProblems of dropped slides
    _bags: dict[str, Bag] = field(default_factory=dict, repr=False)

    @property
    def slide_ids(self) -> list[str]:
        return self.manifest["slide_id"].tolist()

    @property
    def has_coords(self) -> bool:
        return self.coords is not None

    @property
    def has_omics(self) -> bool:
        return self.omics is not None

    @property
    def in_dim(self) -> int:
        return int(self.bag(self.slide_ids[0]).features.shape[1])

    @property
    def omics_dim(self) -> int | None:
        return None if self.omics is None else int(self.omics.shape[1])

    def tasks(self) -> list[str]:
        return [c for c in self.manifest.columns if c not in ("slide_id", "case_id", "site")]

    def labelled(self, task: str) -> pd.DataFrame:
        return self.manifest.loc[self.manifest[task].notna()]

    def bag(self, slide_id: str) -> Bag:
        """The slide's bag, built once and cached (features kept in memory, graph cached on it)."""
        b = self._bags.get(slide_id)
        if b is None:
            row = self._row(slide_id)
            feats = self.features[slide_id]
            feats = feats if torch.is_tensor(feats) else torch.from_numpy(np.ascontiguousarray(feats))
            feats = feats.to(getattr(torch, self.source.feature_dtype))
            xy = None
            if self.coords is not None and self.coords.get(slide_id) is not None:
                c = self.coords[slide_id]
                xy = c if torch.is_tensor(c) else torch.from_numpy(np.ascontiguousarray(c, dtype=np.float32))
            labels = {t: (None if pd.isna(row[t]) else int(row[t])) for t in self.tasks()}
            b = Bag(slide_id=slide_id, case_id=str(row["case_id"]), features=feats, coords=xy,
                    labels=labels, site=str(row.get("site", "")))
            self._bags[slide_id] = b
        return b

    def _row(self, slide_id: str) -> pd.Series:
        if not hasattr(self, "_index"):
            self._index = self.manifest.set_index("slide_id", drop=False)
        try:
            return self._index.loc[slide_id]
        except KeyError:
            raise KeyError(f"slide {slide_id} is not in cohort {self.name}'s manifest") from None

    def class_counts(self, task: str) -> dict[str, int]:
        """Patient-level class counts of a task (as the paper reports them)."""
        per_case = self.labelled(task).groupby("case_id")[task].first()
        return {"positive": int((per_case == 1).sum()), "negative": int((per_case == 0).sum()),
                "unlabelled_cases": int(self.manifest["case_id"].nunique() - per_case.shape[0])}


def _fingerprint(parts: dict[str, Any]) -> str:
    return stable_hash(parts)


def _simulated(src: CohortSource) -> Cohort:
    from benchmarks.data import simulated as sim

    sc = sim.simulate_external(src.scale, seed=src.seed) if src.external else sim.simulate(src.scale, seed=src.seed)
    manifest = sc.manifest.copy()
    for t in ("her2", "pr", "odx"):
        if t in manifest:
            manifest[t] = manifest[t].astype("Int64")
    parts = {"kind": "simulated", "scale": src.scale, "seed": src.seed, "external": src.external,
             "config": repr(sc.config)}
    if src.feature_dtype != "float32":  # the features the models see are rounded: another data set
        parts["feature_dtype"] = src.feature_dtype
    fp = _fingerprint(parts)
    features, coords = sc.features, sc.coords
    if src.feature_store:  # generated once into a memory-mapped store that every worker shares
        from benchmarks.data.store import FeatureStore

        def slide(sid: str):
            g = sc.source.get(sid)
            return g.features, g.coords

        # the generator's own code is part of the key: a changed simulator never reads an old store
        key = "sim-" + hashlib.sha256(f"{fp}|{src.feature_dtype}|{_simulator_digest()}".encode()).hexdigest()[:20]
        store = FeatureStore.open_or_write(
            key, {sid: functools.partial(slide, sid) for sid in manifest["slide_id"]}, src.feature_dtype,
            what=f"writing the simulated {src.scale} cohort to the feature store (once)")
        features, coords = store.mappings()
    return Cohort(name=src.name + ("_external" if src.external else ""), manifest=manifest, features=features,
                  coords=coords, omics=sc.omics, fingerprint=fp, source=src)


def _simulator_digest() -> str:
    from benchmarks.data import simulated

    return hashlib.sha256(Path(simulated.__file__).read_bytes()).hexdigest()[:16]


def _files(src: CohortSource) -> Cohort:
    """Read manifest, every feature file (once) and omics; collect all problems, then decide once:
    stop with the full list, or (``skip_bad_slides``) drop the bad slides and record them."""
    from tqdm.auto import tqdm

    from benchmarks.data import readers, validate
    from benchmarks.data.errors import DataError

    if not src.manifest or not src.features_dir:
        raise ValueError("a file cohort needs a manifest CSV and a features folder")
    label_maps = {col: dict(m) for col, m in src.label_maps}
    problems = []
    # manifest problems (unknown label values, duplicate slides) always stop: the manifest needs fixing
    manifest = readers.read_manifest(src.manifest, label_maps)
    omics = readers.read_omics_table(src.omics) if src.omics else None
    paths, found = readers.locate_feature_files(src.features_dir, manifest["slide_id"])
    problems.extend(found)
    feats: dict[str, np.ndarray] = {}
    coords: dict[str, np.ndarray | None] = {}
    store = None
    if src.feature_store:  # one consolidated, memory-mapped cache shared by every worker process
        from benchmarks.data.store import FeatureStore

        store = FeatureStore.open_or_build(paths, dtype=src.feature_dtype)
    if store is not None:
        problems.extend(p for p in store.problems if p.slide_id in paths)
        feats, coords = store.mappings()
    else:
        for sid, p in tqdm(paths.items(), desc="reading feature files", leave=False, disable=len(paths) < 50):
            try:
                feats[sid], coords[sid] = readers.read_bag_file(p, slide_id=sid)
            except DataError as e:
                problems.extend(e.problems)
    problems.extend(validate.check_dims_agree({s: f.shape[1] for s, f in feats.items()}, paths))
    problems.extend(validate.validate_cohort(manifest, paths, omics, need_omics=False, tasks=label_maps))
    kept = validate.raise_if_problems(problems, skip_bad=src.skip_bad_slides)
    bad = set(validate.bad_slide_ids(kept))
    manifest = manifest.loc[~manifest["slide_id"].isin(bad) & manifest["slide_id"].isin(list(feats))]
    manifest = manifest.reset_index(drop=True)
    if manifest.empty:
        raise DataError(kept, header=f"no usable slide left in {src.manifest}")
    has_coords = all(coords.get(s) is not None for s in manifest["slide_id"])
    from benchmarks.provenance import contents_fingerprint

    sids = list(manifest["slide_id"])  # feature contents, hashed once per (path, size, mtime)
    parts = {"kind": "files", "manifest": int(pd.util.hash_pandas_object(manifest).sum()),
             "files": sorted(zip(sids, contents_fingerprint(paths[s] for s in sids))),
             "omics": None if omics is None else int(pd.util.hash_pandas_object(omics).sum())}
    if src.feature_dtype != "float32":  # rounded features: another data set for the models
        parts["feature_dtype"] = src.feature_dtype
    fp = _fingerprint(parts)
    return Cohort(name=src.name, manifest=manifest, features=feats, coords=coords if has_coords else None,
                  omics=omics, fingerprint=fp, source=src, skipped=kept)


def load_cohort(src: CohortSource) -> Cohort:
    """Load (once per process) the cohort a source describes."""
    key = src.key()
    if key not in _CACHE:
        if src.kind == "milcsv":
            from benchmarks.data.milcsv import load_milcsv

            _CACHE[key] = load_milcsv(src)
        else:
            _CACHE[key] = _simulated(src) if src.kind == "simulated" else _files(src)
    return _CACHE[key]
