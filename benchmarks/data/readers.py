"""Readers for real inputs: patch-feature bags, the slide manifest, the omics table.

Formats (research/suite_anchors.md sections 1.1, 1.3, 1.6, 3.7):

* TRIDENT ``features_<encoder>/<slide>.h5``: dataset ``features`` (N, D) float32 (attrs ``encoder``,
  ``name``) and ``coords`` (N, 2) int64 level-0 (x, y) (attrs ``patch_size``,
  ``patch_size_level0``, ``target_magnification``, ...). Some pipelines store ``(1, N, D)``.
* CLAM ``h5_files/<slide>.h5`` (``features`` + ``coords``) and ``pt_files/<slide>.pt`` (a features
  tensor (N, D), no coords; TRIDENT's ``saveas='pt'`` writes the same, sometimes a numpy array).
* STAMP ``<slide>.h5``: ``feats`` (or ``patch_embeddings``) + ``coords`` in micrometres. The kNN
  graph only needs relative positions, so coordinate units do not matter.
* Manifest CSV/TSV: ``slide_id``, ``case_id``, one label column per task (optional ``site``).
* Omics table CSV/TSV/parquet: case_id x genes (or genes x cases with ``genes_in_rows=True``).

Typical use by the cohort loader (collect every problem, then decide once)::

    paths, problems = locate_feature_files(features_dir, manifest.slide_id)
    dims = {}
    for sid, p in paths.items():
        try:
            feats, coords = read_bag_file(p, sid)
            dims[sid] = feats.shape[1]
        except DataError as e:
            problems += e.problems
    problems += check_dims_agree(dims, paths)
    problems += validate_cohort(manifest, paths, omics, need_omics, tasks)
    dropped = bad_slide_ids(raise_if_problems(problems, skip_bad=args.skip_bad_slides))
"""
from __future__ import annotations

import hashlib
import os
import re
import warnings
from os import PathLike
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import pandas as pd

from .errors import DataError, DataProblem, problem


def file_sha256(path: str | PathLike) -> str:
    """First 16 hex digits of a file's SHA-256, read in 1 MiB chunks (provenance and fingerprints)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]
from .validate import check_bag_arrays, check_dims_agree, raise_if_problems, validate_cohort  # noqa: F401

__all__ = ["find_feature_file", "locate_feature_files", "read_bag_file", "read_manifest",
           "read_omics_table", "check_bag_arrays", "FEATURE_KEYS", "MISSING_LABELS"]

#: feature datasets tried in order: TRIDENT/CLAM, then STAMP's two names
FEATURE_KEYS: tuple[str, ...] = ("features", "feats", "patch_embeddings")
COORD_KEY = "coords"
H5_SUFFIXES = (".h5", ".hdf5")
PT_SUFFIXES = (".pt", ".pth")
WSI_SUFFIXES = (".svs", ".tif", ".tiff", ".ndpi", ".mrxs", ".scn", ".czi", ".bif", ".vms", ".svslide")
#: manifest cells (case-insensitive, stripped) that mean "no label for this task"; TCGA clinical
#: tables use the bracketed forms. Anything else must be in the task's label map.
MISSING_LABELS: frozenset[str] = frozenset({"", "na", "n/a", "nan", "none", "null", "[not available]",
                                            "[not evaluated]", "[unknown]", "[not applicable]"})
TCGA_BARCODE = re.compile(r"^TCGA-[A-Z0-9]{2}-[A-Z0-9]{4}(?:[-.]|$)")
SLIDE_ALIASES = ("slide_id", "slide")
CASE_ALIASES = ("case_id", "patient", "patient_id", "case_submitter_id")


# ----------------------------------------------------------------------------------------------
# feature files
# ----------------------------------------------------------------------------------------------
MAX_ID_BYTES = 240  # a feature file name: the id plus a suffix, within 255 bytes


def _search_dirs(features_dir: Path, ext: str) -> list[Path]:
    """The folder itself, then CLAM's ``h5_files/`` or ``pt_files/`` layout under it."""
    sub = {".h5": "h5_files", ".hdf5": "h5_files", ".pt": "pt_files", ".pth": "pt_files"}.get(ext)
    return [features_dir] + ([features_dir / sub] if sub else [])


def _find(features_dir: Path, slide_id: str, exts: Iterable[str],
          listing: dict[Path, list[str]]) -> Path | DataProblem:
    exts = tuple(exts)
    if not features_dir.is_dir():
        return problem("missing_file", slide_id, features_dir,
                       "features folder does not exist. Check the --data / features path.")
    stems = [slide_id]
    low = slide_id.lower()
    for wsi in WSI_SUFFIXES:  # CLAM strips the WSI suffix when naming feature files
        if low.endswith(wsi):
            stems.append(slide_id[: -len(wsi)])
    tried = []
    for ext in exts:
        for d in _search_dirs(features_dir, ext):
            for stem in stems:
                cand = d / f"{stem}{ext}"
                tried.append(str(cand.relative_to(features_dir)))
                if cand.is_file():
                    return cand
    # near matches help with truncated TCGA ids (file TCGA-...-DX1.<uuid>.h5 vs id TCGA-...-DX1)
    near: list[str] = []
    for ext in exts:
        for d in _search_dirs(features_dir, ext):
            if d not in listing:
                listing[d] = sorted(os.listdir(d)) if d.is_dir() else []
            near += [str((d / n).relative_to(features_dir)) for n in listing[d]
                     if n.startswith(stems[-1]) and n.endswith(exts)]
    near = list(dict.fromkeys(near))
    hint = (f" Files that start with this id: {near[:3]}; make slide_id the full file name without suffix."
            if near else " Check the slide_id spelling and the features folder, or drop the slide from the manifest.")
    return problem("missing_file", slide_id, features_dir, f"no feature file; tried {tried}.{hint}")


def find_feature_file(features_dir: str | PathLike, slide_id: str,
                      exts: Iterable[str] = (".h5", ".pt")) -> Path:
    """``<features_dir>/<slide_id><ext>`` for the first ``ext`` that exists (CLAM's ``h5_files/`` and
    ``pt_files/`` sub-folders are tried too); raises ``DataError(missing_file)`` naming what was tried."""
    found = _find(Path(features_dir), str(slide_id), exts, {})
    if isinstance(found, DataProblem):
        raise DataError(found)
    return found


def locate_feature_files(features_dir: str | PathLike, slide_ids: Iterable[str],
                         exts: Iterable[str] = (".h5", ".pt")) -> tuple[dict[str, Path], list[DataProblem]]:
    """:func:`find_feature_file` for many slides: ({slide_id: path}, problems of the missing ones)."""
    paths: dict[str, Path] = {}
    problems: list[DataProblem] = []
    listing: dict[Path, list[str]] = {}
    exts = tuple(exts)
    for sid in slide_ids:
        found = _find(Path(features_dir), str(sid), exts, listing)
        if isinstance(found, DataProblem):
            problems.append(found)
        else:
            paths[str(sid)] = found
    return paths, problems


def _h5_inventory(f: Any) -> list[str]:
    import h5py

    items: list[str] = []

    def visit(name: str, obj: Any) -> None:
        if isinstance(obj, h5py.Dataset) and len(items) < 12:
            items.append(f"'{name}' {tuple(obj.shape)} {obj.dtype}")

    f.visititems(visit)
    return items


def _squeeze_batch(a: np.ndarray) -> np.ndarray:
    """(1, N, D) -> (N, D): the batch axis some extractors keep."""
    return a[0] if a.ndim == 3 and a.shape[0] == 1 else a


def _read_h5(path: Path, slide_id: str, feature_key: str | None) -> tuple[np.ndarray, np.ndarray | None, str]:
    import h5py

    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise DataError(problem("unreadable", slide_id, path,
                                f"cannot open as HDF5 ({str(e).splitlines()[0]}). The file is truncated or not "
                                "an .h5 feature file; re-extract the slide.")) from None
    with f:
        keys = [feature_key] if feature_key else list(FEATURE_KEYS)
        key = next((k for k in keys if k in f and isinstance(f[k], h5py.Dataset)), None)
        if key is None:
            inv = _h5_inventory(f)
            hint = ""
            if inv and all(s.startswith(f"'{COORD_KEY}'") for s in inv):
                hint = (" It holds coordinates only (a TRIDENT patches/*_patches.h5 or CLAM patches/ file): point "
                        "the features folder at features_<encoder>/ or h5_files/.")
            looked = f"'{feature_key}'" if feature_key else " or ".join(f"'{k}'" for k in FEATURE_KEYS)
            raise DataError(problem("wrong_key", slide_id, path,
                                    f"no feature dataset {looked}; the file has {inv or 'no datasets'}.{hint} "
                                    "Pass feature_key=<name> for another layout, or re-extract with TRIDENT/CLAM."))
        try:  # reading validates every (compressed) chunk
            feats = np.asarray(f[key][()])
            coords = None
            if COORD_KEY in f and isinstance(f[COORD_KEY], h5py.Dataset):
                coords = np.asarray(f[COORD_KEY][()])
        except OSError as e:
            raise DataError(problem("unreadable", slide_id, path,
                                    f"'{key}' cannot be read ({str(e).splitlines()[0]}): a damaged chunk. Re-extract "
                                    "the slide, or pass --skip-bad-slides to drop it.")) from None
    return feats, coords, key


def _torch_load(path: Path, slide_id: str) -> Any:
    """``torch.load(weights_only=True)``, allowing plain numpy arrays (TRIDENT's ``saveas='pt'``)."""
    import torch

    try:
        from numpy._core.multiarray import _reconstruct  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import _reconstruct
    safe = [_reconstruct, np.ndarray, np.dtype] + [type(np.dtype(t)) for t in
                                                   (np.float16, np.float32, np.float64, np.int32, np.int64)]
    try:
        with torch.serialization.safe_globals(safe):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure is reported the same way
        text = re.sub(r"\x1b\[[0-9;]*m", "", str(e))
        unsafe = re.findall(r"Unsupported global: GLOBAL ([\w.]+)", text)
        first = (f"it holds objects other than tensors/arrays ({', '.join(unsafe)})" if unsafe else
                 (text.strip().splitlines() or [type(e).__name__])[0][:200])
        raise DataError(problem("unreadable", slide_id, path,
                                f"cannot load safely with torch.load(weights_only=True): {first}. Save the features "
                                "as a plain tensor: torch.save(features_NxD, path).")) from None


def _to_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu()
        return (x.float() if x.is_floating_point() else x).numpy()
    return np.asarray(x)


def _read_pt(path: Path, slide_id: str, feature_key: str | None) -> tuple[np.ndarray, np.ndarray | None, str]:
    obj = _torch_load(path, slide_id)
    is_array = lambda v: hasattr(v, "detach") or isinstance(v, np.ndarray)  # noqa: E731
    if is_array(obj) and feature_key is None:
        return _to_numpy(obj), None, "features"
    if isinstance(obj, Mapping):
        keys = [feature_key] if feature_key else list(FEATURE_KEYS)
        key = next((k for k in keys if k in obj and is_array(obj[k])), None)
        if key is not None:
            coords = obj.get(COORD_KEY)
            return _to_numpy(obj[key]), (_to_numpy(coords) if is_array(coords) else None), key
        found = [f"'{k}' ({type(v).__name__}{', ' + str(tuple(v.shape)) if is_array(v) else ''})"
                 for k, v in list(obj.items())[:12]]
        looked = f"'{feature_key}'" if feature_key else " or ".join(f"'{k}'" for k in FEATURE_KEYS)
        raise DataError(problem("wrong_key", slide_id, path,
                                f"no feature entry {looked}; the dict has {found or 'no entries'}. Pass "
                                "feature_key=<name>, or save the (N, D) features tensor itself."))
    what = f"a {type(obj).__name__}" + (" (feature_key was given, but it is not a dict)" if is_array(obj) else "")
    raise DataError(problem("wrong_key", slide_id, path,
                            f"holds {what}; need an (N, D) features tensor or a dict with a 'features' entry. "
                            "Re-save it with torch.save(features_NxD, path)."))


def read_bag_file(path: str | PathLike, slide_id: str | None = None, feature_key: str | None = None, *,
                  expected_dim: int | None = None, check: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
    """One slide's patch features (N, D) float32 and coords (N, 2) float32 or ``None``.

    ``.h5``: TRIDENT/CLAM ``features`` (N, D) or (1, N, D) + ``coords``; STAMP ``feats`` /
    ``patch_embeddings`` also accepted; ``feature_key`` names another dataset. ``.pt``: a CLAM
    features tensor (no coords) or a dict with a features entry (and optional ``coords``).
    With ``check`` (default) the arrays go through :func:`check_bag_arrays` (empty bag, NaN/Inf,
    ``expected_dim``, coords shape) and every problem found is raised in one ``DataError``.
    """
    path = Path(path)
    sid = str(slide_id) if slide_id is not None else path.stem
    if not path.is_file():
        raise DataError(problem("missing_file", sid, path,
                                "feature file does not exist. Check the features folder or drop the slide from "
                                "the manifest."))
    suffix = path.suffix.lower()
    if suffix in H5_SUFFIXES:
        feats, coords, key = _read_h5(path, sid, feature_key)
    elif suffix in PT_SUFFIXES:
        feats, coords, key = _read_pt(path, sid, feature_key)
    else:
        raise DataError(problem("unreadable", sid, path,
                                f"unknown feature file suffix {path.suffix!r}; the readers take "
                                f"{list(H5_SUFFIXES + PT_SUFFIXES)} (TRIDENT/CLAM/STAMP .h5, CLAM .pt)."))
    feats = _squeeze_batch(feats)
    coords = None if coords is None else _squeeze_batch(coords)
    if np.issubdtype(feats.dtype, np.number) and not np.issubdtype(feats.dtype, np.complexfloating):
        with np.errstate(over="ignore"):  # float64 beyond float32 range becomes Inf: reported below
            feats = np.ascontiguousarray(feats, dtype=np.float32)
    if coords is not None and np.issubdtype(coords.dtype, np.number):
        coords = np.ascontiguousarray(coords, dtype=np.float32)
    if check:
        found = check_bag_arrays(sid, path, feats, coords, expected_dim, feature_key=key,
                                 expected_from="expected_dim" if expected_dim is not None else None)
        if found:
            raise DataError(found)
    elif feats.dtype != np.float32:
        raise DataError(problem("bad_value", sid, path, f"'{key}' has dtype {feats.dtype}; need real numbers. "
                                                        "Re-extract the slide."))
    return feats, coords


# ----------------------------------------------------------------------------------------------
# tables
# ----------------------------------------------------------------------------------------------
def _read_table(path: Path, what: str, **kw: Any) -> pd.DataFrame:
    if not path.is_file():
        raise DataError(problem("missing_file", None, path, f"{what} file does not exist. Check the path."))
    suffix = path.suffix.lower()
    try:
        if suffix in (".parquet", ".pq"):
            try:
                return pd.read_parquet(path)
            except ImportError as e:
                raise DataError(problem("unreadable", None, path,
                                        f"reading parquet needs pyarrow ({e}). `pip install pyarrow` or save the "
                                        f"{what} as CSV/TSV.")) from None
        sep = "\t" if suffix in (".tsv", ".tab", ".txt") else ("," if suffix == ".csv" else None)
        return pd.read_csv(path, sep=sep, engine="python" if sep is None else "c", **kw)
    except DataError:
        raise
    except Exception as e:  # noqa: BLE001 - parser errors of any kind
        raise DataError(problem("unreadable", None, path,
                                f"cannot parse the {what} ({type(e).__name__}: {str(e).splitlines()[0][:200]}). "
                                "Use a CSV or TSV with a header row.")) from None


def _pick_column(columns: Iterable[str], aliases: Iterable[str]) -> str | None:
    cols = list(columns)
    for a in aliases:
        if a in cols:
            return a
    low = {str(c).strip().casefold(): c for c in cols}
    for a in aliases:
        if a.casefold() in low:
            return low[a.casefold()]
    return None


def _norm_label(v: Any) -> str:
    s = str(v).strip().casefold()
    if re.fullmatch(r"[+-]?\d+\.0*", s):  # "1.0" from a spreadsheet means "1"
        s = s.split(".")[0]
    return s


def _label_lookup(task: str, mapping: Mapping[Any, int | None]) -> dict[str, int | None]:
    """Normalised raw value -> class (``None`` = unlabelled). Bad maps are programming errors."""
    out: dict[str, int | None] = {}
    for raw, cls in mapping.items():
        key = _norm_label(raw)
        if cls is not None and (int(cls) != cls or int(cls) < 0):
            raise ValueError(f"task {task!r}: label map sends {raw!r} to {cls!r}; classes are ints >= 0 "
                             "(None for unlabelled)")
        cls = None if cls is None else int(cls)
        if key in out and out[key] != cls:
            raise ValueError(f"task {task!r}: label map has {raw!r} twice (case-insensitive) with different classes")
        out[key] = cls
    return out


def read_manifest(path: str | PathLike, tasks: Mapping[str, Mapping[Any, int | None]], *,
                  missing_values: Iterable[str] = MISSING_LABELS, default_site: str = "internal") -> pd.DataFrame:
    """The slide table: one row per slide, one label column per task.

    Columns in: ``slide_id`` (alias ``slide``), ``case_id`` (aliases ``patient``, ``patient_id``,
    ``case_submitter_id``), one column per task (exact name, else a unique case-insensitive match),
    optional ``site``. ``tasks`` maps task -> {raw label (case-insensitive) -> class int, or
    ``None`` for "unlabelled"}. Cells in ``missing_values`` (empty, NA, TCGA's "[Not Available]",
    ...) are unlabelled (``pd.NA``), never negative. Without ``case_id``, TCGA slide ids give
    ``case_id`` = first 12 characters (said in a warning and ``df.attrs["notes"]``).

    Returns columns ``slide_id``, ``case_id``, ``site`` and each task as ``Int64`` with NA; raises
    one ``DataError`` listing every problem (missing column, duplicate slide, unknown label, ...).
    """
    path = Path(path)
    missing = {str(m).strip().casefold() for m in missing_values}
    raw = _read_table(path, "manifest", dtype=str, keep_default_na=False, na_values=[])
    raw = raw.astype(object).where(raw.notna(), "")  # parquet nulls -> empty cells
    raw.columns = [str(c).strip() for c in raw.columns]
    name = path.name
    notes: list[str] = []
    problems: list[DataProblem] = []

    def line(i: int) -> str:
        return f"line {i + 2}" if path.suffix.lower() not in (".parquet", ".pq") else f"row {i}"

    if raw.shape[0] == 0:
        raise DataError(problem("empty_table", None, path, f"the manifest has a header ({list(raw.columns)}) but no "
                                "rows; list one slide per row."))
    slide_col = _pick_column(raw.columns, SLIDE_ALIASES)
    if slide_col is None:
        raise DataError(problem("missing_column", None, path,
                                f"no 'slide_id' column; the manifest has {list(raw.columns)}. Add a slide_id column "
                                "(the feature file name without suffix)."))
    sids = raw[slide_col].map(lambda v: str(v).strip())
    for i, s in enumerate(sids):
        if s == "":
            problems.append(problem("bad_value", None, path, f"{line(i)}: empty slide_id. Fill it or delete the row."))
        elif "/" in s or "\\" in s or s in (".", "..") or s.startswith("~") or os.path.isabs(s):
            problems.append(problem("bad_id", s[:80], path, f"{line(i)}: slide_id {s[:80]!r} is a path, not a file "
                                    "name; feature files are looked up inside the features folder only. Use the "
                                    "file name without folders or suffix."))
        elif len(s.encode()) > MAX_ID_BYTES:
            problems.append(problem("bad_id", s[:40] + "...", path, f"{line(i)}: slide_id is {len(s.encode())} bytes "
                                    f"long; a feature file name allows {MAX_ID_BYTES} (255 minus the suffix). "
                                    "Shorten the id (and the file name)."))

    case_col = _pick_column(raw.columns, CASE_ALIASES)
    if case_col is not None:
        cids = raw[case_col].map(lambda v: str(v).strip())
        if case_col != "case_id":
            notes.append(f"{name}: using column '{case_col}' as case_id")
        for i, (s, c) in enumerate(zip(sids, cids)):
            if c == "" and s != "":
                problems.append(problem("bad_value", s, path,
                                        f"empty case_id on {line(i)}; patient-level splits need it. Fill it in."))
    elif len(sids) and all(TCGA_BARCODE.match(s) for s in sids):
        cids = sids.str.slice(0, 12)
        notes.append(f"{name}: no case_id column; derived case_id from the TCGA barcodes in slide_id "
                     "(first 12 characters, TCGA-XX-XXXX)")
    else:
        bad = [s for s in sids if not TCGA_BARCODE.match(s)][:3]
        raise DataError(problem("missing_column", None, path,
                                f"no 'case_id' column, and slide ids such as {bad} are not TCGA barcodes, so the "
                                "patient of each slide is unknown. Add a case_id column (use the slide_id when every "
                                "patient has one slide); patient-level splits depend on it."))

    positions: dict[str, list[int]] = {}
    for i, s in enumerate(sids):
        if s:
            positions.setdefault(s, []).append(i)
    for s, rows in positions.items():
        if len(rows) > 1:
            problems.append(problem("duplicate_slide", s, path,
                                    f"slide_id appears {len(rows)} times ({', '.join(line(i) for i in rows)}); each "
                                    "slide must be listed once. Remove the duplicate rows."))

    site_col = _pick_column(raw.columns, ("site",))
    sites = (raw[site_col].map(lambda v: str(v).strip() or default_site) if site_col is not None
             else pd.Series([default_site] * len(raw), dtype=object))

    out = pd.DataFrame({"slide_id": sids.to_numpy(dtype=object), "case_id": cids.to_numpy(dtype=object),
                        "site": sites.to_numpy(dtype=object)})
    for task, mapping in tasks.items():
        col = task if task in raw.columns else _pick_column(raw.columns, (task,))
        if col is None:
            problems.append(problem("missing_column", None, path,
                                    f"no label column for task '{task}'; the manifest has {list(raw.columns)}. Add "
                                    f"a '{task}' column (empty cells = unlabelled)."))
            continue
        lookup = _label_lookup(task, mapping)
        known = sorted({str(k) for k in mapping})
        values: list[Any] = []
        for i, (s, v) in enumerate(zip(sids, raw[col])):
            key = _norm_label(v)
            if key in missing:
                values.append(pd.NA)
            elif key in lookup:
                values.append(pd.NA if lookup[key] is None else lookup[key])
            else:
                values.append(pd.NA)
                problems.append(problem("unknown_label", s or None, path,
                                        f"column '{col}' has {str(v).strip()!r} ({line(i)}), which task '{task}' does "
                                        f"not know; known values: {known} (case-insensitive). Fix the cell, leave it "
                                        "empty for unlabelled, or add the value to the task's label map (map it to "
                                        "None for unlabelled)."))
        out[task] = pd.array(values, dtype="Int64")

    for task in tasks:  # one patient, one label: slides of a case that disagree cannot be split by patient
        if task not in out:
            continue
        lab = out[["case_id", "slide_id", task]].dropna(subset=[task])
        n = lab.groupby("case_id")[task].nunique()
        for case in n[n > 1].index:
            rows = lab[lab["case_id"] == case]
            detail = ", ".join(f"{sl}={int(v)}" for sl, v in zip(rows["slide_id"], rows[task]))
            problems.append(problem("conflicting_label", str(rows["slide_id"].iloc[0]), path,
                                    f"case {case} has different '{task}' labels on its slides ({detail}); a "
                                    "patient has one label per task. Fix the manifest (or leave the wrong cells "
                                    "empty)."))
    if problems:
        raise DataError(problems, header=f"{len(problems)} problems in the manifest {path}:"
                        if len(problems) > 1 else None)
    for n in notes:
        warnings.warn(n, UserWarning, stacklevel=2)
    out.attrs["notes"] = notes
    out.attrs["source"] = str(path)
    return out


def read_omics_table(path: str | PathLike, *, genes_in_rows: bool = False,
                     case_column: str | None = None) -> pd.DataFrame:
    """Omics table as a float32 DataFrame indexed by ``case_id``, one column per gene.

    CSV/TSV/parquet with one row per case: the ``case_column`` (default ``case_id`` if present, else
    the first column; for parquet a named index also works). ``genes_in_rows=True`` reads the
    transposed layout (first column gene ids, one column per case). NaN/Inf, non-numeric cells, empty
    or duplicate case ids raise one ``DataError`` naming cases and genes.
    """
    path = Path(path)
    df = _read_table(path, "omics table")
    df.columns = [str(c).strip() for c in df.columns]
    problems: list[DataProblem] = []
    if genes_in_rows:
        gene_col = case_column or _pick_column(df.columns, ("gene", "gene_id", "genes")) or df.columns[0]
        df = df.set_index(gene_col).T
        df.index.name = "case_id"
        df = df.reset_index()
        case_col = "case_id"
    else:
        case_col = case_column or _pick_column(df.columns, ("case_id",) + CASE_ALIASES[1:])
        if case_col is None:
            if not isinstance(df.index, pd.RangeIndex):  # parquet written with a case index
                df = df.reset_index()
            case_col = df.columns[0]
        elif case_col not in df.columns:
            raise DataError(problem("missing_column", None, path,
                                    f"no column {case_col!r}; the table has {list(df.columns)[:10]}..."))
    cases = df[case_col].map(lambda v: "" if pd.isna(v) else str(v).strip())
    body = df.drop(columns=[case_col])
    if body.shape[1] == 0 or body.shape[0] == 0:
        raise DataError(problem("bad_shape", None, path,
                                f"omics table has {body.shape[0]} cases x {body.shape[1]} genes after taking "
                                f"'{case_col}' as the case id; need >=1 of each. Check the separator and layout "
                                "(genes_in_rows=True for a genes x cases table)."))
    empty = [i for i, c in enumerate(cases) if c == ""]
    if empty:
        problems.append(problem("bad_value", None, path, f"{len(empty)} row(s) without a case id (rows {empty[:5]}). "
                                                         "Fill or delete them."))
    dup = cases[cases.duplicated(keep=False) & (cases != "")].unique().tolist()
    if dup:
        problems.append(problem("duplicate_case", None, path,
                                f"{len(dup)} case id(s) appear more than once: {dup[:5]}. Keep one row per case "
                                "(average the replicates yourself if that is intended)."))
    numeric = body.apply(pd.to_numeric, errors="coerce")
    nonnum = numeric.isna() & body.notna()
    if nonnum.to_numpy().any():
        r, c = np.nonzero(nonnum.to_numpy())
        ex = [f"{cases.iloc[i]}/{body.columns[j]}={body.iat[i, j]!r}" for i, j in zip(r[:5], c[:5])]
        problems.append(problem("bad_value", None, path,
                                f"{len(r)} non-numeric value(s), e.g. {ex}. Omics must be numbers; fix or impute."))
    values = numeric.to_numpy(dtype=np.float64, na_value=np.nan)
    bad = ~np.isfinite(values) & ~nonnum.to_numpy()
    if bad.any():
        bad_cases = [cases.iloc[i] for i in np.flatnonzero(bad.any(axis=1))]
        bad_genes = [body.columns[j] for j in np.flatnonzero(bad.any(axis=0))]
        problems.append(problem("nan_inf", None, path,
                                f"{int(bad.sum())} NaN/Inf value(s) in {len(bad_cases)} case(s) {bad_cases[:5]} and "
                                f"{len(bad_genes)} gene(s) {bad_genes[:5]}. Impute them or drop those genes/cases "
                                "before running."))
    f32 = float(np.finfo(np.float32).max)
    huge = np.isfinite(values) & (np.abs(np.nan_to_num(values)) > f32)
    if huge.any():
        r, c = np.nonzero(huge)
        ex = [f"{cases.iloc[i]}/{body.columns[j]}={values[i, j]:.3g}" for i, j in zip(r[:5], c[:5])]
        problems.append(problem("bad_value", None, path,
                                f"{len(r)} value(s) beyond float32 (|x| > {f32:.3g}), e.g. {ex}; they would become "
                                "Inf. Rescale (e.g. log-transform) the omics."))
    if problems:
        raise DataError(problems, header=f"{len(problems)} problems in the omics table {path}:"
                        if len(problems) > 1 else None)
    out = pd.DataFrame(values.astype(np.float32), index=pd.Index(cases.tolist(), name="case_id"),
                       columns=[str(c) for c in body.columns])
    out.attrs["source"] = str(path)
    return out
