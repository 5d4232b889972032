"""Checks on loaded input: bag arrays, feature dims across slides, the cohort as a whole.

Each ``check_*`` returns a list of :class:`~benchmarks.data.errors.DataProblem` (empty when all is
well) so a loader can look at every slide before deciding; :func:`raise_if_problems` then stops
with the full list (default) or returns the slide-level problems for ``--skip-bad-slides``.
Models must never see a bag that failed a check: one bad slide must not silently change results.
"""
from __future__ import annotations

from collections import Counter
from os import PathLike
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import pandas as pd

from .errors import DataError, DataProblem, problem

__all__ = ["check_bag_arrays", "check_dims_agree", "validate_cohort", "raise_if_problems",
           "bad_slide_ids"]

_DROP_HINT = "Re-extract the slide or drop it from the manifest."


def _as_numpy(a: Any) -> np.ndarray:
    if hasattr(a, "detach"):  # torch tensor (bfloat16 has no numpy dtype)
        a = a.detach().cpu()
        a = a.float() if a.is_floating_point() else a
        return a.numpy()
    return np.asarray(a)


def _first_rows(mask_rows: np.ndarray, k: int = 3) -> str:
    idx = np.flatnonzero(mask_rows)[:k]
    return ", ".join(str(int(i)) for i in idx)


def check_bag_arrays(slide_id: str, path: str | PathLike | None, features: Any, coords: Any,
                     expected_dim: int | None = None, *, expected_from: str | None = None,
                     feature_key: str = "features") -> list[DataProblem]:
    """Problems of one slide's arrays: shape, empty bag, NaN/Inf, feature dim, coords.

    features: (N, D) array or tensor; coords: (N, 2) or ``None``. ``expected_dim`` is the cohort's
    feature dimension (``expected_from`` says where it came from, for the message).
    """
    out: list[DataProblem] = []
    f = _as_numpy(features)
    if f.ndim != 2:
        hint = (" A (D,) vector is a slide-level embedding (e.g. TRIDENT slide_features_*); MIL needs "
                "the patch features (features_<encoder>/)." if f.ndim == 1 else "")
        out.append(problem("bad_shape", slide_id, path,
                           f"'{feature_key}' has shape {tuple(f.shape)}; need (N patches, D dims).{hint} "
                           + _DROP_HINT))
        return out
    n, d = f.shape
    if n == 0 or d == 0:
        what = "patch" if n == 0 else "feature dim"
        out.append(problem("empty_bag", slide_id, path,
                           f"'{feature_key}' has shape {(n, d)}; need >=1 {what}. " + _DROP_HINT))
        return out
    if not np.issubdtype(f.dtype, np.number) or np.issubdtype(f.dtype, np.complexfloating):
        out.append(problem("bad_value", slide_id, path,
                           f"'{feature_key}' has dtype {f.dtype}; need real numbers. " + _DROP_HINT))
        return out
    if np.issubdtype(f.dtype, np.floating):
        bad = ~np.isfinite(f)
        n_bad = int(bad.sum())
        if n_bad:
            n_nan = int(np.isnan(f).sum())
            rows = bad.any(axis=1)
            out.append(problem("nan_inf", slide_id, path,
                               f"'{feature_key}' has {n_bad} non-finite values (NaN {n_nan}, Inf {n_bad - n_nan}) "
                               f"in {int(rows.sum())} of {n} patches, first at row(s) {_first_rows(rows)}. "
                               "Re-extract the slide (check the encoder's precision), or drop it from the manifest."))
    if expected_dim is not None and d != expected_dim:
        src = f" ({expected_from})" if expected_from else ""
        out.append(problem("dim_mismatch", slide_id, path,
                           f"'{feature_key}' has dim {d} but the cohort uses {expected_dim}{src}; the slide was "
                           "probably extracted with another encoder. Re-extract it with the cohort's encoder "
                           "or drop it from the manifest."))
    if coords is not None:
        c = _as_numpy(coords)
        if c.ndim != 2 or c.shape != (n, 2):
            out.append(problem("bad_coords", slide_id, path,
                               f"'coords' has shape {tuple(c.shape)} but 'features' has {n} patches; need ({n}, 2). "
                               "Features and coords must come from the same extraction run; re-extract the slide."))
        elif not np.issubdtype(c.dtype, np.number):
            out.append(problem("bad_coords", slide_id, path,
                               f"'coords' has dtype {c.dtype}; need numbers. Re-extract the slide."))
        elif np.issubdtype(c.dtype, np.floating) and not np.isfinite(c).all():
            rows = ~np.isfinite(c).all(axis=1)
            out.append(problem("bad_coords", slide_id, path,
                               f"'coords' has non-finite values in {int(rows.sum())} of {n} patches, first at "
                               f"row(s) {_first_rows(rows)}. Re-extract the slide."))
    return out


def check_dims_agree(dims: Mapping[str, int], paths: Mapping[str, str | PathLike] | None = None,
                     expected_dim: int | None = None) -> list[DataProblem]:
    """Feature-dim mismatch between slides: ``dims`` maps slide_id -> D.

    The reference is ``expected_dim`` when given (e.g. from the suite config), else the most common
    dimension (so the one odd slide is named, not all the others); a tie is reported for every slide.
    """
    if not dims:
        return []
    counts = Counter(dims.values())
    if expected_dim is not None:
        ref, src = expected_dim, "set in the configuration"
    else:
        (ref, top), *rest = counts.most_common()
        if rest and rest[0][1] == top:  # no majority: report every slide with its dim
            summary = ", ".join(f"{c} slides with dim {d}" for d, c in counts.most_common())
            return [problem("dim_mismatch", s, (paths or {}).get(s),
                            f"feature dim {d} while the cohort mixes dims ({summary}); all slides must come from "
                            "the same encoder. Re-extract or drop the odd slides from the manifest.")
                    for s, d in dims.items()]
        src = f"{top} of {len(dims)} slides"
    out = []
    for s, d in dims.items():
        if d != ref:
            out.append(problem("dim_mismatch", s, (paths or {}).get(s),
                               f"'features' has dim {d} but the cohort uses {ref} ({src}); the slide was probably "
                               "extracted with another encoder. Re-extract it with the cohort's encoder or drop it "
                               "from the manifest."))
    return out


def _label_values(mapping: Mapping[Any, Any]) -> set[int]:
    return {int(v) for v in mapping.values() if v is not None}


def validate_cohort(manifest: pd.DataFrame, feature_paths: Mapping[str, str | PathLike] | None,
                    omics: pd.DataFrame | None, need_omics: bool,
                    tasks: Mapping[str, Mapping[Any, Any]] | Iterable[str]) -> list[DataProblem]:
    """Cross-checks of an assembled cohort (manifest from :func:`read_manifest`).

    * columns ``slide_id``, ``case_id`` and one per task exist; slide ids are unique;
    * task labels are NA or one of the task's class ints (never negative placeholders);
    * ``feature_paths`` (when given) has an existing file for every slide;
    * ``need_omics``: an omics table is given and has a finite row for the case of every slide
      that is labelled for at least one task (those may land in a training part);
      problems are reported per slide, so ``--skip-bad-slides`` can drop exactly those.
    """
    out: list[DataProblem] = []
    src = manifest.attrs.get("source", "manifest")
    task_maps = dict(tasks) if isinstance(tasks, Mapping) else {t: None for t in tasks}
    need_cols = ["slide_id", "case_id", *task_maps]
    absent = [c for c in need_cols if c not in manifest.columns]
    if absent:
        out.append(problem("missing_column", None, src,
                           f"missing column(s) {absent}; it has {list(map(str, manifest.columns))}. "
                           "Add them (one label column per task)."))
        return out

    sids = manifest["slide_id"].astype(str)
    for sid, c in Counter(sids).items():
        if c > 1:
            out.append(problem("duplicate_slide", sid, src,
                               f"slide_id appears {c} times; each slide must be listed once. Remove the duplicate rows."))
    for sid, cid in zip(sids, manifest["case_id"]):
        if pd.isna(cid) or str(cid).strip() == "":
            out.append(problem("bad_value", sid, src,
                               "empty case_id; every slide needs its patient id for patient-level splits."))

    for task, mapping in task_maps.items():
        col = pd.to_numeric(manifest[task], errors="coerce")
        nonnum = manifest[task].notna() & col.isna()
        allowed = _label_values(mapping) if mapping is not None else None
        for sid, raw, val, nn in zip(sids, manifest[task], col, nonnum):
            if nn:
                out.append(problem("unknown_label", sid, src,
                                   f"column '{task}' holds {raw!r}, not a class index; read the manifest with "
                                   "read_manifest so raw labels are mapped."))
            elif pd.notna(val) and (val < 0 or val != int(val) or (allowed is not None and int(val) not in allowed)):
                known = sorted(allowed) if allowed is not None else "non-negative ints"
                out.append(problem("unknown_label", sid, src,
                                   f"column '{task}' has class {val!r}; task '{task}' knows {known}. Unlabelled "
                                   "slides must be NA, never a negative placeholder."))

    if feature_paths is not None:
        for sid in sids:
            p = feature_paths.get(sid)
            if p is None:
                out.append(problem("missing_file", sid, None,
                                   "no feature file located for this slide. Extract its features or drop it from "
                                   "the manifest."))
            elif not Path(p).is_file():
                out.append(problem("missing_file", sid, p,
                                   "feature file does not exist. Check the features folder or drop the slide from "
                                   "the manifest."))

    if need_omics:
        labelled = np.zeros(len(manifest), dtype=bool)
        for task in task_maps:
            labelled |= manifest[task].notna().to_numpy()
        if omics is None:
            out.append(problem("missing_omics", None, None,
                               "this method needs omics at training, but no omics table was given. Pass the omics "
                               "table (case_id x genes) or choose a slide-only method."))
            return out
        osrc = omics.attrs.get("source")
        index = set(map(str, omics.index))
        values = omics.apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
        finite_rows = {str(c) for c, ok in zip(omics.index, np.isfinite(values).all(axis=1)) if ok}
        hint = ""
        if index and all(len(i) > 12 and i.startswith("TCGA-") for i in list(index)[:50]):
            hint = (" The omics index looks like TCGA sample barcodes; case ids are their first 12 characters "
                    "(TCGA-XX-XXXX).")
        for sid, cid, lab in zip(sids, manifest["case_id"].astype(str), labelled):
            if not lab:
                continue
            if cid not in index:
                out.append(problem("missing_omics", sid, osrc,
                                   f"case {cid} has no row in the omics table ({len(index)} cases), but this method "
                                   f"needs omics at training.{hint} Add the case's omics or drop the slide."))
            elif cid not in finite_rows:
                out.append(problem("nan_inf", sid, osrc,
                                   f"case {cid} has NaN/Inf/non-numeric values in its omics row. Impute them or "
                                   "drop the case."))
    return out


def bad_slide_ids(problems: Iterable[DataProblem]) -> list[str]:
    """Sorted slide ids named by slide-level problems (the slides ``--skip-bad-slides`` drops)."""
    return sorted({p.slide_id for p in problems if p.slide_id is not None})


def raise_if_problems(problems: Iterable[DataProblem], skip_bad: bool = False) -> list[DataProblem]:
    """Stop on any problem (default), or with ``skip_bad`` return the slide-level problems.

    Cohort-level problems (``slide_id is None``: a missing column, a broken omics table) cannot be
    fixed by dropping slides, so they raise even with ``skip_bad``. The caller drops
    :func:`bad_slide_ids` of the returned list and records them with the results.
    """
    problems = list(problems)
    if not problems:
        return []
    cohort_level = [p for p in problems if p.slide_id is None]
    if not skip_bad:
        n_bad = len(bad_slide_ids(problems))
        tail = (f"Fix them, or rerun with --skip-bad-slides to drop the {n_bad} bad slide(s) and record which."
                if n_bad and not cohort_level else "Fix them and rerun.")
        header = f"{len(problems)} problem(s) with the input data. {tail}"
        raise DataError(problems, header=header)
    if cohort_level:
        raise DataError(cohort_level, header=f"{len(cohort_level)} problem(s) that --skip-bad-slides cannot fix "
                                             "(they are not tied to one slide):")
    return problems
