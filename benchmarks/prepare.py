"""Build the TCGA-BRCA manifest, labels and omics table from public tables and your slide features.

    python -m benchmarks prepare --suite tcga_brca --features DIR --clinical FILE --expression FILE [--out DIR]

Inputs (every format as downloaded, see README "Run on your own TCGA-BRCA features"):

* ``--features``: a folder of ``<slide_id>.h5`` (TRIDENT/CLAM) or ``<slide_id>.pt`` (CLAM), also
  CLAM's ``h5_files/`` and ``pt_files/`` sub-folders; the file name is the TCGA slide barcode
  (``TCGA-A1-A0SB-01Z-00-DX1[.<uuid>]``). Case id = its first 12 characters (``TCGA-A1-A0SB``);
  the slides of one case always stay in the same fold.
* ``--clinical``: GDC's BCR Biotab patient table (``nationwidechildrens.org_clinical_patient_brca.txt``:
  ``bcr_patient_barcode``, ``er_status_by_ihc``, ``pr_status_by_ihc``, ``her2_status_by_ihc``,
  ``her2_ihc_score``, ``her2_fish_status``; its two extra header rows are skipped) or cBioPortal's
  ``data_clinical_patient.txt`` (``#`` header lines, ``PATIENT_ID``, ``ER_STATUS_BY_IHC``,
  ``PR_STATUS_BY_IHC``, ``IHC_HER2``, ``HER2_FISH_STATUS``; column names are case-insensitive).
* ``--expression``: RNA-seq, genes x samples with TCGA sample barcodes as column names
  (cBioPortal ``data_mrna_seq_v2_rsem.txt`` with ``Hugo_Symbol``/``Entrez_Gene_Id``; GDC/Firehose
  ``RSEM_genes_normalized`` with ``Hybridization REF`` and ``SYMBOL|ENTREZ`` ids; any CSV/TSV of
  that shape). Raw values (normalised counts/TPM) by default; ``--expression-log2`` when they are
  already log2(x+1) (UCSC Xena ``HiSeqV2``).

Labels (patient level, as the paper counts them):

* PR: ``pr_status_by_ihc`` Positive = 1, Negative = 0; anything else (Indeterminate, Equivocal,
  [Not Evaluated], empty) is unlabelled and counted, never negative.
* HER2 (ASCO/CAP-style precedence, Wolff et al. 2013): IHC 3+ or FISH positive -> positive; else
  IHC 0/1+ or FISH negative -> negative; else (IHC 2+/equivocal without a FISH result, or nothing)
  unlabelled. IHC comes from the score column (``her2_ihc_score``: 0, 1+, 2+, 3+) when present,
  else from the IHC status (Positive = 3+, Negative = 0/1+, Equivocal = 2+). So IHC 3+ with FISH
  negative is positive, and IHC 1+ with FISH positive is positive. ``--her2-column COL`` uses a
  precomputed Positive/Negative column instead (e.g. ``HER2Calc``).
* ODX: a research recurrence score from RNA with the 21-gene formula of Paik et al., NEJM 351:2817
  (2004), computed as genefu's ``oncotypedx(do.scaling=TRUE)`` does (bhklab/genefu R/oncotypedx.R):
  the 16 cancer genes (the 5 reference genes ACTB, GAPDH, GUSB, RPLP0, TFRC are not used, as in
  genefu) on log2(x+1), each rescaled to 0..15 by its min and max over the cohort's tumour samples;

      GRB7 group      = max(8,   0.9 GRB7 + 0.1 ERBB2)
      ER group        = (0.8 ESR1 + 1.2 PGR + BCL2 + SCUBE2) / 4
      prolif. group   = max(6.5, (BIRC5 + MKI67 + MYBL2 + CCNB1 + AURKA) / 5)
      invasion group  = (CTSL2 + MMP11) / 2                  (CTSL2 is HGNC's CTSV today)
      RSU = 0.47 GRB7g - 0.34 ERg + 1.04 prolifg + 0.10 invasiong + 0.05 CD68 - 0.08 GSTM1 - 0.07 BAG1
      RS  = clip(20 (RSU - 6.7), 0, 100)

  High risk ("H") = RS above its 85th percentile (linear interpolation) among HR+/HER2- patients,
  applied to every patient with RNA (Howard et al., npj Breast Cancer 2023, fmhoward/DLRS
  ``createCrossfoldsRS``: HR+ = ER positive or PR positive, HER2 not positive). The percentile is
  taken over the whole RNA cohort, not over your slides, so labels do not depend on which slides
  you have. ``--odx-threshold T`` uses a fixed cut instead (H iff RS >= T, e.g. 31 in Paik 2004,
  26 in TAILORx); ``--odx-column COL`` takes precomputed H/L labels from the clinical table.
  The percentile and the 0..15 rescaling are cohort statistics of the label definition (as in the
  paper's source); nothing is fitted for the models here.

Omics for the methods: ``omics.csv``, one row per case, log2(x+1) of every gene (genes with
missing values dropped, counted). Gene selection and z-scoring are fitted inside each training fold
at run time (``benchmarks/data/omics.py``), never here and never on test cases.

Outputs in ``--out`` (default ``data_manifests/<suite>/``), named as the suite's ``[data]`` table
wants them, so ``python -m benchmarks run --suite tcga_brca --data OUT`` runs on them:
``manifest.csv`` (slide_id, case_id, her2, pr, odx + er, odx_rs, tss, expression_sample),
``omics.csv``, ``labels.csv`` (one row per case: every intermediate value: IHC/FISH calls, group
scores, RSU, RS, HR+/HER2- membership), ``features`` (a link to your features folder),
``prepare_report.json`` (inputs, rules, thresholds, counts, dropped slides, warnings) and a
``.gitignore`` so patient data never enter git.

Validation: every problem is collected and reported at once, each naming the slide, case or
gene and the fix: slides without features (empty/unreadable .h5, or listed with ``--slides`` but
absent), features without clinical rows, cases without omics, duplicate barcodes (slide files,
expression samples, conflicting clinical rows), missing genes, missing columns. ``--drop-incomplete``
drops the slides with slide-level problems instead (recorded in the report). Class counts far
from the paper's (HER2 141/668, PR 649/351, ODX 282/715) give a warning, not an error.
"""
from __future__ import annotations

import csv
import json
import os
import re
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from benchmarks.data.readers import file_sha256
from benchmarks.data.errors import DataError, DataProblem, problem

# ----------------------------------------------------------------------------------------------
# constants
# ----------------------------------------------------------------------------------------------
#: TCGA barcodes: patient TCGA-XX-XXXX (12), sample TCGA-XX-XXXX-01 (15, sample type 01..29)
PATIENT_RE = re.compile(r"^TCGA-[A-Z0-9]{2}-[A-Z0-9]{4}$", re.I)
SLIDE_RE = re.compile(r"^TCGA-[A-Z0-9]{2}-[A-Z0-9]{4}(?:[-.]|$)", re.I)
SAMPLE_RE = re.compile(r"^TCGA-[A-Z0-9]{2}-[A-Z0-9]{4}-(\d{2})", re.I)
#: clinical cells that mean "no value" (TCGA's bracketed forms included)
MISSING = frozenset({"", "na", "n/a", "nan", "none", "null", "[not available]", "[not evaluated]",
                     "[unknown]", "[not applicable]", "[discrepancy]", "[completed]", "not reported", "unknown"})

ID_ALIASES = ("bcr_patient_barcode", "patient_id", "case_id", "case_submitter_id", "cases.submitter_id",
              "submitter_id", "patient", "bcr_sample_barcode", "sample_id")
ER_ALIASES = ("er_status_by_ihc",)
PR_ALIASES = ("pr_status_by_ihc",)
HER2_IHC_STATUS_ALIASES = ("her2_status_by_ihc", "ihc_her2")
HER2_IHC_SCORE_ALIASES = ("her2_ihc_score", "ihc_score", "her2_ihc_score_value")
HER2_FISH_ALIASES = ("her2_fish_status", "her2_fish_status_value")

#: the 21-gene Recurrence Score (Paik et al., NEJM 2004): the 16 cancer genes by group, with
#: (symbol in the formula, accepted aliases in expression tables: older TCGA/HGNC symbols)
RS_GENES: dict[str, tuple[str, ...]] = {
    "GRB7": ("GRB7",), "ERBB2": ("ERBB2", "HER2"),                                    # HER2 group
    "ESR1": ("ESR1",), "PGR": ("PGR",), "BCL2": ("BCL2",), "SCUBE2": ("SCUBE2",),      # ER group
    "BIRC5": ("BIRC5",), "MKI67": ("MKI67",), "MYBL2": ("MYBL2",), "CCNB1": ("CCNB1",),
    "AURKA": ("AURKA", "STK15", "STK6"),                                              # proliferation
    "CTSL2": ("CTSL2", "CTSV"), "MMP11": ("MMP11",),                                  # invasion
    "CD68": ("CD68",), "GSTM1": ("GSTM1",), "BAG1": ("BAG1",),
}
RS_REFERENCE_GENES = ("ACTB", "GAPDH", "GUSB", "RPLP0", "TFRC")  # not used (genefu: absent from most platforms)
RS_SCALE_MAX = 15.0  # genefu do.scaling: each gene to 0..15 (RT-PCR: one unit ~ a doubling)
PAPER_NAMES = {"her2": "HER2", "pr": "PR", "odx": "ODX"}


# ----------------------------------------------------------------------------------------------
# small helpers
# ----------------------------------------------------------------------------------------------
def _norm(v: Any) -> str:
    return "" if v is None or (isinstance(v, float) and np.isnan(v)) else str(v).strip()


def _is_number(v: Any) -> bool:
    try:
        float(v)
    except (TypeError, ValueError):
        return False
    return True


def _pick(columns: Iterable[str], aliases: Iterable[str]) -> str | None:
    low = {str(c).strip().casefold(): c for c in columns}
    for a in aliases:
        if a.casefold() in low:
            return low[a.casefold()]
    return None


def _sep_for(path: Path, first_line: str) -> str:
    if path.suffix.lower() == ".csv":
        return ","
    if path.suffix.lower() in (".tsv", ".txt", ".tab"):
        return "\t"
    return "\t" if first_line.count("\t") >= first_line.count(",") else ","


# ----------------------------------------------------------------------------------------------
# slide features
# ----------------------------------------------------------------------------------------------
FEATURE_SUFFIXES = (".h5", ".hdf5", ".pt", ".pth")


def list_feature_files(features_dir: str | Path) -> tuple[dict[str, Path], list[DataProblem]]:
    """{slide_id: file} for every feature file in the folder (and CLAM's h5_files/, pt_files/).

    Problems: a missing folder, file names that are not TCGA slide barcodes, one slide id with
    several files (``.h5`` and ``.pt``, or root and ``h5_files/``): "duplicate barcodes".
    """
    d = Path(features_dir)
    if not d.is_dir():
        raise DataError(problem("missing_file", None, d, "features folder does not exist. Pass the folder of "
                                                         "<slide_id>.h5/.pt files (TRIDENT features_<encoder>/ or "
                                                         "CLAM h5_files/ / pt_files/)."))
    found: dict[str, list[Path]] = {}
    for sub in (d, d / "h5_files", d / "pt_files"):
        if not sub.is_dir():
            continue
        for p in sorted(sub.iterdir()):
            if p.is_file() and p.suffix.lower() in FEATURE_SUFFIXES:
                found.setdefault(p.stem, []).append(p)
    problems: list[DataProblem] = []
    if not found:
        problems.append(problem("missing_file", None, d, f"no {'/'.join(FEATURE_SUFFIXES)} feature files in the "
                                                         "folder (nor in h5_files/ or pt_files/)."))
    not_tcga = [s for s in found if not SLIDE_RE.match(s)]
    if not_tcga:
        problems.append(problem("bad_value", None, d,
                                f"{len(not_tcga)} feature file(s) not named by a TCGA slide barcode, e.g. "
                                f"{not_tcga[:3]}; name each file <slide barcode>.h5 (TCGA-XX-XXXX-01Z-00-DX1...) so "
                                "the case id (first 12 characters) is known, or move the others out."))
    dups = {s: ps for s, ps in found.items() if len(ps) > 1}
    if dups:
        ex = "; ".join(f"{s}: {[str(p.relative_to(d)) for p in ps]}" for s, ps in list(dups.items())[:3])
        problems.append(problem("duplicate_slide", None, d,
                                f"duplicate barcodes: {len(dups)} slide id(s) have several feature files ({ex}). "
                                "Keep one file per slide."))
    low = {}
    for s in found:
        low.setdefault(s.upper(), []).append(s)
    case_dups = [v for v in low.values() if len(v) > 1]
    if case_dups:
        problems.append(problem("duplicate_slide", None, d,
                                f"duplicate barcodes: slide ids differing only in letter case: {case_dups[:3]}. "
                                "Keep one file per slide."))
    paths = {s: ps[0] for s, ps in found.items() if SLIDE_RE.match(s)}
    return paths, problems


def check_feature_files(paths: Mapping[str, Path], full: bool = False) -> list[DataProblem]:
    """Slides without features: empty or unreadable files. ``.h5`` files are checked by their
    header (the ``features``/``feats``/``patch_embeddings`` dataset has >= 1 row, and every slide
    has the same feature dimension); ``full`` reads every file with the run-time reader (NaN/Inf,
    shapes, ``.pt`` content too)."""
    from benchmarks.data import readers

    out: list[DataProblem] = []
    dims: dict[str, int] = {}
    for sid, p in paths.items():
        if p.stat().st_size == 0:
            out.append(problem("empty_bag", sid, p, "slide without features: the file is empty (0 bytes). "
                                                    "Re-extract the slide or use --drop-incomplete."))
            continue
        if full:
            try:
                dims[sid] = int(readers.read_bag_file(p, slide_id=sid)[0].shape[1])
            except DataError as e:
                out.extend(e.problems)
            continue
        if p.suffix.lower() in (".h5", ".hdf5"):
            import h5py

            try:
                with h5py.File(p, "r") as f:
                    key = next((k for k in readers.FEATURE_KEYS if k in f), None)
                    if key is None:
                        out.append(problem("wrong_key", sid, p, f"slide without features: no dataset "
                                                                f"{list(readers.FEATURE_KEYS)} in the file (it has "
                                                                f"{list(f.keys())[:6]}). Re-extract the slide."))
                        continue
                    shape = f[key].shape
            except OSError as e:
                out.append(problem("unreadable", sid, p, f"cannot open as HDF5 ({str(e).splitlines()[0]}). "
                                                         "Re-extract the slide or use --drop-incomplete."))
                continue
            if len(shape) == 3 and shape[0] == 1:
                shape = shape[1:]
            if len(shape) != 2:
                out.append(problem("bad_shape", sid, p, f"'{key}' has shape {tuple(shape)}; need (N, D). Re-extract "
                                                        "the slide or use --drop-incomplete."))
            elif shape[0] == 0:
                out.append(problem("empty_bag", sid, p, f"slide without features: '{key}' has shape {tuple(shape)}; "
                                                        "need >= 1 patch. Re-extract the slide or use "
                                                        "--drop-incomplete."))
            else:
                dims[sid] = int(shape[1])
    return out + readers.check_dims_agree(dims, paths)  # one encoder for every slide


def read_slide_list(path: str | Path) -> list[str]:
    """Expected slides: a text file (one id per line) or a table with ``slide_id``/``file_name``/
    ``filename`` (the GDC manifest); WSI suffixes (.svs, ...) are stripped."""
    from benchmarks.data.readers import WSI_SUFFIXES

    path = Path(path)
    if not path.is_file():
        raise DataError(problem("missing_file", None, path, "slide list does not exist."))
    lines = [ln.rstrip("\n\r") for ln in path.read_text().splitlines() if ln.strip()]
    if not lines:
        return []
    sep = _sep_for(path, lines[0])
    head = [h.strip() for h in lines[0].split(sep)]
    col = _pick(head, ("slide_id", "slide", "file_name", "filename"))
    if col is not None:
        i = head.index(col)
        ids = [ln.split(sep)[i].strip() for ln in lines[1:] if len(ln.split(sep)) > i]
    else:
        ids = [ln.split(sep)[0].strip() for ln in lines]
    out = []
    for s in ids:
        for suf in WSI_SUFFIXES:
            if s.lower().endswith(suf):
                s = s[: -len(suf)]
        if s:
            out.append(s)
    return out


# ----------------------------------------------------------------------------------------------
# clinical table
# ----------------------------------------------------------------------------------------------
def read_clinical(path: str | Path) -> pd.DataFrame:
    """The clinical table as strings, one row per input row, with a ``case_id`` column (12 chars).

    Skips cBioPortal's leading ``#`` lines and GDC Biotab's extra header rows (a second row
    repeating the column names and a ``CDE_ID:`` row). Raises ``DataError`` for a missing file,
    no id column, or ids that are not TCGA barcodes.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(problem("missing_file", None, path, "clinical table does not exist. Download GDC's "
                                                            "clinical_patient_brca Biotab file or cBioPortal's "
                                                            "data_clinical_patient.txt (README)."))
    with open(path, newline="", encoding="utf-8-sig") as f:
        lines = f.read().splitlines()
    skip = 0
    while skip < len(lines) and lines[skip].startswith("#"):
        skip += 1
    if skip >= len(lines):
        raise DataError(problem("bad_shape", None, path, "no header row after the '#' comment lines."))
    sep = _sep_for(path, lines[skip])
    df = pd.read_csv(path, sep=sep, skiprows=skip, dtype=str, keep_default_na=False, na_values=[],
                     quoting=csv.QUOTE_MINIMAL, encoding="utf-8-sig")
    df.columns = [str(c).strip() for c in df.columns]
    id_col = _pick(df.columns, ID_ALIASES)
    if id_col is None:
        raise DataError(problem("missing_column", None, path,
                                f"no patient id column ({', '.join(ID_ALIASES[:3])}, ...); the table has "
                                f"{list(df.columns)[:12]}. Use GDC's clinical_patient Biotab or cBioPortal's "
                                "data_clinical_patient.txt."))
    ids = df[id_col].map(_norm)
    names = {c.casefold() for c in df.columns}
    header_like = ids.map(lambda s: s.casefold() in names or s.upper().startswith("CDE_ID") or s == "")
    df = df.loc[~header_like].copy()
    ids = ids.loc[~header_like]
    bad = [s for s in ids if not SLIDE_RE.match(s)]
    if bad:
        raise DataError(problem("bad_value", None, path,
                                f"{len(bad)} id(s) in column '{id_col}' are not TCGA barcodes, e.g. {bad[:3]}; "
                                "the patient id must be TCGA-XX-XXXX."))
    df.insert(0, "case_id", ids.str.slice(0, 12).str.upper().to_numpy())
    df.attrs["source"] = str(path)
    df.attrs["id_column"] = id_col
    return df


def _status(v: Any) -> str | None:
    """'positive' / 'negative' / 'equivocal' / 'indeterminate' / None (missing) / other raw text."""
    s = _norm(v).casefold()
    if s in MISSING:
        return None
    if s in ("positive", "pos", "+", "1", "amplified"):
        return "positive"
    if s in ("negative", "neg", "-", "0", "not amplified", "non-amplified"):
        return "negative"
    if s.startswith("equivocal"):
        return "equivocal"
    if s.startswith("indeterminate"):
        return "indeterminate"
    return s


def _ihc_score(v: Any) -> int | None:
    s = _norm(v).replace(" ", "")
    m = re.fullmatch(r"([0-3])\+?", s)
    return int(m.group(1)) if m else None


@dataclass
class LabelCall:
    """Per-case label values plus why each was given or dropped (``reason``)."""

    value: pd.Series  # index case_id -> 'positive'/'negative'/None
    reason: pd.Series  # index case_id -> short text


def binary_status(clin: pd.DataFrame, aliases: Sequence[str], what: str) -> LabelCall:
    """Positive/Negative from one IHC status column; every other value is unlabelled (reason kept)."""
    col = _pick(clin.columns, aliases)
    if col is None:
        raise DataError(problem("missing_column", None, clin.attrs.get("source"),
                                f"no {what} column ({' or '.join(aliases)} / {aliases[0].upper()}); the table has "
                                f"{[c for c in clin.columns if c != 'case_id'][:12]}..."))
    raw = clin[col].map(_status)
    value = raw.map(lambda s: s if s in ("positive", "negative") else None)
    reason = raw.map(lambda s: f"{col}={s}" if s in ("positive", "negative") else
                     (f"{col} missing" if s is None else f"{col}={s} (dropped)"))
    return LabelCall(pd.Series(value.to_numpy(), index=clin["case_id"]), pd.Series(reason.to_numpy(),
                                                                                   index=clin["case_id"]))


def her2_status(clin: pd.DataFrame, column: str | None = None) -> LabelCall:
    """HER2 per row from IHC and FISH (rule in the module docstring), or a precomputed column."""
    src = clin.attrs.get("source")
    if column:
        col = _pick(clin.columns, (column,))
        if col is None:
            raise DataError(problem("missing_column", None, src, f"no column {column!r} (--her2-column); the table "
                                                                 f"has {list(clin.columns)[:12]}..."))
        raw = clin[col].map(_status)
        value = raw.map(lambda s: s if s in ("positive", "negative") else None)
        reason = raw.map(lambda s: f"{col}={s}" if s in ("positive", "negative") else f"{col}={s} (dropped)")
        return LabelCall(pd.Series(value.to_numpy(), index=clin["case_id"]),
                         pd.Series(reason.to_numpy(), index=clin["case_id"]))
    score_col = _pick(clin.columns, HER2_IHC_SCORE_ALIASES)
    status_col = _pick(clin.columns, HER2_IHC_STATUS_ALIASES)
    fish_col = _pick(clin.columns, HER2_FISH_ALIASES)
    if score_col is None and status_col is None and fish_col is None:
        raise DataError(problem("missing_column", None, src,
                                "no HER2 columns: need IHC (her2_status_by_ihc / IHC_HER2 or her2_ihc_score) and/or "
                                "FISH (her2_fish_status / HER2_FISH_STATUS), or a precomputed Positive/Negative "
                                "column via --her2-column (e.g. HER2Calc)."))
    values, reasons = [], []
    for _, row in clin.iterrows():
        ihc, ihc_txt = None, ""  # ihc: 'pos' (3+), 'neg' (0/1+), 'eq' (2+)
        score = _ihc_score(row[score_col]) if score_col is not None else None
        if score is not None:
            ihc, ihc_txt = ("pos" if score == 3 else "eq" if score == 2 else "neg"), f"IHC {score}{'+' * (score > 0)}"
        elif status_col is not None:
            st = _status(row[status_col])
            ihc = {"positive": "pos", "negative": "neg", "equivocal": "eq"}.get(st or "")
            ihc_txt = {"pos": "IHC positive (3+)", "neg": "IHC negative (0/1+)",
                       "eq": "IHC equivocal (2+)"}.get(ihc, "")
        fish = _status(row[fish_col]) if fish_col is not None else None
        if ihc == "pos":
            value, why = "positive", ihc_txt
        elif fish == "positive":
            value, why = "positive", "FISH positive" + (f" ({ihc_txt})" if ihc_txt else "")
        elif ihc == "neg":
            value, why = "negative", ihc_txt
        elif fish == "negative":
            value, why = "negative", "FISH negative" + (f" ({ihc_txt})" if ihc_txt else "")
        elif ihc == "eq":
            value, why = None, "IHC equivocal (2+) without a FISH result (dropped)"
        else:
            value, why = None, "no IHC/FISH result (dropped)"
        values.append(value)
        reasons.append(why)
    return LabelCall(pd.Series(values, index=clin["case_id"].to_numpy(), dtype=object),
                     pd.Series(reasons, index=clin["case_id"].to_numpy(), dtype=object))


def odx_given_labels(clin: pd.DataFrame, column: str) -> LabelCall:
    """Precomputed ODX labels (H/L, high/low, 1/0) from the clinical table (``--odx-column``)."""
    col = _pick(clin.columns, (column,))
    if col is None:
        raise DataError(problem("missing_column", None, clin.attrs.get("source"),
                                f"no column {column!r} (--odx-column); the table has {list(clin.columns)[:12]}..."))
    m = {"h": "H", "high": "H", "1": "H", "l": "L", "low": "L", "0": "L"}
    raw = clin[col].map(lambda v: _norm(v).casefold())
    value = raw.map(lambda s: m.get(s))
    reason = raw.map(lambda s: f"{col}={s}" + ("" if s in m else " (dropped)"))
    return LabelCall(pd.Series(value.to_numpy(), index=clin["case_id"]),
                     pd.Series(reason.to_numpy(), index=clin["case_id"]))


def collapse_cases(calls: Mapping[str, LabelCall], source: str | None) -> tuple[pd.DataFrame, list[DataProblem]]:
    """One row per case. Several clinical rows for a case (a sample-level table, or duplicates)
    are merged when their non-missing values agree; conflicting rows are a problem naming the case."""
    index = next(iter(calls.values())).value.index
    cols: dict[str, Any] = {}
    for k, c in calls.items():
        cols[k] = c.value.to_numpy(dtype=object)
        cols[f"{k}_reason"] = c.reason.to_numpy(dtype=object)
    frame = pd.DataFrame(cols, index=pd.Index(index.to_numpy(), name="case_id"))
    problems: list[DataProblem] = []
    rows = {}
    for case, g in frame.groupby(level=0, sort=True):
        row = {}
        for k in calls:
            vals = {v for v in g[k] if v is not None and not (isinstance(v, float) and np.isnan(v))}
            if len(vals) > 1:
                problems.append(problem("duplicate_case", None, source,
                                        f"duplicate barcodes: case {case} has {len(g)} clinical rows that disagree on "
                                        f"{k} ({sorted(vals)}). Keep one row per patient."))
            row[k] = next(iter(vals)) if len(vals) == 1 else None
            reasons_k = [r for v, r in zip(g[k], g[f"{k}_reason"]) if v == row[k]] or list(g[f"{k}_reason"])
            row[f"{k}_reason"] = reasons_k[0]
        rows[case] = row
    out = pd.DataFrame.from_dict(rows, orient="index")
    out.index.name = "case_id"
    return out, problems


# ----------------------------------------------------------------------------------------------
# expression matrix
# ----------------------------------------------------------------------------------------------
@dataclass
class Expression:
    """Log2(x+1) expression, cases x genes, from each case's chosen tumour sample."""

    values: pd.DataFrame  # index case_id, columns genes (unique), float64
    sample_of_case: dict[str, str]
    notes: list[str] = field(default_factory=list)


def _gene_name(v: Any) -> str:
    s = _norm(v)
    if "|" in s:  # GDC/Firehose 'SYMBOL|ENTREZ'; '?|100130426' keeps the whole id
        sym = s.split("|", 1)[0]
        return s if sym in ("", "?") else sym
    return s


def read_expression(path: str | Path, already_log2: bool = False) -> Expression:
    """Genes x samples RNA matrix (TCGA sample barcodes as column names) -> cases x genes, log2(x+1).

    Per case one tumour sample is used: sample type 01 (primary tumour) first, then the other
    tumour types (02-09) in order; among several aliquots the first barcode in sorted order.
    Normal (10-19) and control (20-29) samples are ignored. Problems: duplicate sample barcodes,
    no barcode columns, negative values in raw mode (they are not counts).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(problem("missing_file", None, path, "expression matrix does not exist."))
    with open(path, newline="", encoding="utf-8-sig") as f:
        first = f.readline().rstrip("\r\n")
    sep = _sep_for(path, first)
    header = [h.strip().strip('"') for h in next(csv.reader([first], delimiter=sep))]
    notes: list[str] = []
    sample_cols = [h for h in header if SAMPLE_RE.match(h)]
    if not sample_cols:  # samples x genes layout: barcodes down the first column
        df = pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False, encoding="utf-8-sig")
        first_col = df.iloc[:, 0].map(_norm)
        if len(first_col) and first_col.map(lambda s: bool(SAMPLE_RE.match(s))).mean() > 0.5:
            ids = first_col.tolist()
            dup = sorted({s for s in ids if ids.count(s) > 1})
            if dup:
                raise DataError(problem("duplicate_case", None, path, f"duplicate barcodes: sample(s) {dup[:5]} "
                                                                      "appear in several rows. Keep one per sample."))
            df = df.set_index(df.columns[0]).T.reset_index()
            header = [str(c) for c in df.columns]
            sample_cols = [h for h in header if SAMPLE_RE.match(h)]
            notes.append("expression matrix read as samples x genes (barcodes in the first column)")
        else:
            raise DataError(problem("bad_shape", None, path,
                                    f"no TCGA sample barcodes (TCGA-XX-XXXX-01...) among the column names "
                                    f"{header[:5]}...; need genes x samples with barcodes as column names."))
    else:
        dup = sorted({h for h in sample_cols if sample_cols.count(h) > 1})
        if dup:
            raise DataError(problem("duplicate_case", None, path,
                                    f"duplicate barcodes: sample column(s) {dup[:5]} appear more than once in the "
                                    "header. Keep one column per sample."))
        # sub-header rows right below the header (GDC/Firehose: 'gene_id normalized_count ...') are
        # skipped before parsing, so the sample columns parse as numbers (a 20k x 1k matrix of strings
        # would take gigabytes)
        skip: list[int] = []
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f, delimiter=sep)
            next(reader)
            for k, row in enumerate(reader, start=1):
                cells = [c for h, c in zip(header, row) if SAMPLE_RE.match(h)]
                if cells and not any(_is_number(c) for c in cells):
                    skip.append(k)
                if k >= 5 or k not in skip:
                    break
        if skip:
            notes.append(f"{len(skip)} non-numeric row(s) skipped (sub-header rows such as 'normalized_count')")
        annot_cols = [h for h in header if not SAMPLE_RE.match(h)]
        df = pd.read_csv(path, sep=sep, skiprows=skip, dtype={c: str for c in annot_cols}, encoding="utf-8-sig")
        df.columns = [str(c).strip().strip('"') for c in df.columns]
    annot = [c for c in df.columns if c not in set(sample_cols)]
    if not annot:
        raise DataError(problem("missing_column", None, path, "no gene id column (e.g. Hugo_Symbol, gene_id)."))
    gene_col = _pick(annot, ("Hugo_Symbol", "gene_symbol", "symbol", "gene", "gene_name", "gene_id",
                             "Hybridization REF", "sample")) or annot[0]
    values = df[sample_cols]
    if any(not pd.api.types.is_numeric_dtype(t) for t in values.dtypes):
        values = values.apply(pd.to_numeric, errors="coerce")
    numeric_rows = values.notna().any(axis=1)
    n_sub = int((~numeric_rows).sum())  # e.g. GDC's 'gene_id / normalized_count' second header row
    if n_sub:
        notes.append(f"{n_sub} non-numeric row(s) skipped (sub-header rows such as 'normalized_count')")
    genes = df.loc[numeric_rows, gene_col].map(_gene_name)
    values = values.loc[numeric_rows]
    keep = genes != ""
    if (~keep).sum():
        notes.append(f"{int((~keep).sum())} row(s) without a gene symbol dropped")
    genes, values = genes[keep], values.loc[keep]
    # duplicated symbols stay apart: 'SYM', 'SYM|<entrez>' (or 'SYM#2', ...)
    entrez_col = _pick(annot, ("Entrez_Gene_Id", "entrez", "entrez_gene_id"))
    dup_mask = genes.duplicated(keep="first")
    rs_aliases = {a for al in RS_GENES.values() for a in al}
    dup_rs = sorted(set(genes[genes.duplicated(keep=False)]) & rs_aliases)
    if dup_rs:
        raise DataError(problem("duplicate_case", None, path,
                                f"duplicate barcodes: Recurrence Score gene(s) {dup_rs} appear in several rows; the "
                                "score cannot choose between them. Keep one row per gene."))
    if dup_mask.any():
        names = genes.copy()
        counter: dict[str, int] = {}
        for i in names.index[dup_mask]:
            counter[names[i]] = counter.get(names[i], 1) + 1
            ent = _norm(df.at[i, entrez_col]) if entrez_col else ""
            names[i] = f"{names[i]}|{ent}" if ent else f"{names[i]}#{counter[names[i]]}"
        notes.append(f"{int(dup_mask.sum())} duplicated gene symbol row(s) kept under distinct names (SYMBOL|ENTREZ)")
        genes = names
    mat = values.to_numpy(dtype=np.float64, na_value=np.nan).T  # (samples, genes)
    finite = mat[np.isfinite(mat)]
    if already_log2:
        if finite.size and finite.max() > 100:
            warnings.warn(f"{path}: --expression-log2 was given but values reach {finite.max():.0f}; they look "
                          "like raw counts (then drop --expression-log2)", stacklevel=2)
        logged = mat
    else:
        if finite.size and finite.min() < 0:
            raise DataError(problem("bad_value", None, path,
                                    f"negative expression values (min {finite.min():.3g}); raw counts/TPM cannot be "
                                    "negative. Pass --expression-log2 if the matrix is already log2(x+1); z-scores "
                                    "cannot be used (the Recurrence Score needs expression levels)."))
        if finite.size and finite.max() < 50:
            warnings.warn(f"{path}: values are at most {finite.max():.3g}; they look already log-transformed. "
                          "Pass --expression-log2 if they are log2(x+1).", stacklevel=2)
        logged = np.log2(mat + 1.0)
    # one tumour sample per case
    by_case: dict[str, list[str]] = {}
    for s in sample_cols:
        code = int(SAMPLE_RE.match(s).group(1))
        if 1 <= code <= 9:
            by_case.setdefault(s[:12].upper(), []).append(s)
    n_non_tumour = len(sample_cols) - sum(len(v) for v in by_case.values())
    if n_non_tumour:
        notes.append(f"{n_non_tumour} non-tumour sample(s) (normal/control, types 10-29) ignored")
    chosen = {c: sorted(v, key=lambda s: (int(s[13:15]) != 1, int(s[13:15]), s))[0] for c, v in by_case.items()}
    multi = sum(len(v) > 1 for v in by_case.values())
    if multi:
        notes.append(f"{multi} case(s) with several tumour samples: primary tumour (01) first, then the first "
                     "barcode in sorted order")
    col_of = {s: i for i, s in enumerate(sample_cols)}
    cases = sorted(chosen)
    out = pd.DataFrame(logged[[col_of[chosen[c]] for c in cases]], index=pd.Index(cases, name="case_id"),
                       columns=genes.tolist())
    return Expression(values=out, sample_of_case=chosen, notes=notes)


# ----------------------------------------------------------------------------------------------
# Oncotype DX research recurrence score
# ----------------------------------------------------------------------------------------------
def resolve_rs_genes(columns: Iterable[str]) -> tuple[dict[str, str], list[str]]:
    """{formula symbol: column} and the list of missing formula genes (with the aliases tried)."""
    cols = {str(c).upper(): c for c in columns}
    found, missing = {}, []
    for sym, aliases in RS_GENES.items():
        hit = next((cols[a.upper()] for a in aliases if a.upper() in cols), None)
        if hit is None:
            missing.append(sym if len(aliases) == 1 else f"{sym} (or {'/'.join(aliases[1:])})")
        else:
            found[sym] = hit
    return found, missing


def recurrence_score(expr_log2: pd.DataFrame, source: str | None = None) -> pd.DataFrame:
    """Paik et al. (2004) 21-gene Recurrence Score per case, genes rescaled as genefu does.

    ``expr_log2``: cases x genes, log2(x+1). Returns columns ``grb7_group``, ``er_group``,
    ``proliferation_group``, ``invasion_group``, ``rsu`` (unscaled) and ``rs`` (0..100).
    Missing genes raise one ``DataError`` listing them all.
    """
    found, missing = resolve_rs_genes(expr_log2.columns)
    if missing:
        raise DataError(problem("missing_column", None, source,
                                f"the expression matrix lacks {len(missing)} of the 16 Recurrence Score genes: "
                                f"{', '.join(missing)}. Use a matrix with HGNC gene symbols (e.g. cBioPortal "
                                "data_mrna_seq_v2_rsem.txt), or give precomputed ODX labels with --odx-column."))
    x = expr_log2[[found[s] for s in RS_GENES]].astype(np.float64)
    x.columns = list(RS_GENES)
    if x.isna().any().any():
        bad = x.columns[x.isna().any()].tolist()
        n_bad = int(x.isna().any(axis=1).sum())
        warnings.warn(f"{n_bad} case(s) have missing values in Recurrence Score genes {bad}; their ODX is "
                      "unlabelled", stacklevel=2)
    lo, hi = x.min(), x.max()
    const = (hi - lo).index[(hi - lo) <= 0].tolist()
    if const:
        raise DataError(problem("bad_value", None, source,
                                f"Recurrence Score gene(s) {const} have the same value in all {len(x)} cases; the "
                                "0-15 rescaling (genefu do.scaling) is undefined. Check the expression matrix."))
    g = (x - lo) / (hi - lo) * RS_SCALE_MAX  # genefu oncotypedx(do.scaling=TRUE)
    grb7 = np.maximum(0.9 * g["GRB7"] + 0.1 * g["ERBB2"], 8.0)
    er = (0.8 * g["ESR1"] + 1.2 * g["PGR"] + g["BCL2"] + g["SCUBE2"]) / 4.0
    prolif = np.maximum((g["BIRC5"] + g["MKI67"] + g["MYBL2"] + g["CCNB1"] + g["AURKA"]) / 5.0, 6.5)
    invasion = (g["CTSL2"] + g["MMP11"]) / 2.0
    rsu = (0.47 * grb7 - 0.34 * er + 1.04 * prolif + 0.10 * invasion + 0.05 * g["CD68"] - 0.08 * g["GSTM1"]
           - 0.07 * g["BAG1"])
    rs = np.clip(20.0 * (rsu - 6.7), 0.0, 100.0)
    return pd.DataFrame({"grb7_group": grb7, "er_group": er, "proliferation_group": prolif,
                         "invasion_group": invasion, "rsu": rsu, "rs": rs})


@dataclass
class OdxRule:
    kind: str  # "quantile" | "threshold"
    quantile: float
    threshold: float  # the RS cut actually used
    n_reference: int  # HR+/HER2- cases the quantile is taken over (0 for a fixed threshold)


def odx_labels(rs: pd.Series, er: pd.Series, pr: pd.Series, her2: pd.Series, quantile: float = 0.85,
               threshold: float | None = None) -> tuple[pd.Series, pd.Series, OdxRule]:
    """'H'/'L' per case with an RS; returns (labels, HR+/HER2- membership, rule).

    Howard et al. 2023 (DLRS ``createCrossfoldsRS``): reference = (ER positive or PR positive) and
    HER2 not positive; cut = ``quantile`` of RS there (linear interpolation, pandas' default);
    H iff RS > cut, for every case with an RS. A fixed ``threshold``: H iff RS >= threshold.
    """
    rs = rs.dropna()
    idx = rs.index
    er_, pr_, her2_ = (s.reindex(idx) for s in (er, pr, her2))
    ref = ((er_ == "positive") | (pr_ == "positive")) & (her2_ != "positive")
    if threshold is not None:
        rule = OdxRule("threshold", float("nan"), float(threshold), 0)
        high = rs >= threshold
    else:
        if not 0 < quantile < 1:
            raise ValueError(f"--odx-quantile must be in (0, 1), got {quantile}")
        if int(ref.sum()) < 2:
            raise DataError(problem("bad_value", None, None,
                                    f"only {int(ref.sum())} HR+/HER2- case(s) with an RNA score; the "
                                    f"{quantile:.0%} percentile rule needs them. Check the ER/PR/HER2 columns, or set "
                                    "a fixed cut with --odx-threshold."))
        cut = float(rs[ref].quantile(quantile))
        rule = OdxRule("quantile", quantile, cut, int(ref.sum()))
        high = rs > cut
    return high.map({True: "H", False: "L"}), ref, rule


# ----------------------------------------------------------------------------------------------
# the whole preparation
# ----------------------------------------------------------------------------------------------
@dataclass
class Prepared:
    manifest: pd.DataFrame
    labels: pd.DataFrame
    omics: pd.DataFrame
    counts: pd.DataFrame
    report: dict[str, Any]
    warnings: list[str]


def class_counts(manifest: pd.DataFrame, paper: Mapping[str, Mapping[str, int]], tolerance: float
                 ) -> tuple[pd.DataFrame, list[str]]:
    """Patient-level counts per task next to the paper's; warnings for counts far from them
    (relative difference above ``tolerance`` for either class)."""
    per_case = manifest.drop_duplicates("case_id").set_index("case_id")
    rows, warns = [], []
    for task, pos_val, neg_val in (("her2", "positive", "negative"), ("pr", "positive", "negative"),
                                   ("odx", "H", "L")):
        col = per_case[task]
        pos, neg = int((col == pos_val).sum()), int((col == neg_val).sum())
        pp, pn = (paper.get(task, {}) or {}).get("positive"), (paper.get(task, {}) or {}).get("negative")
        rows.append({"task": PAPER_NAMES[task], "positive": pos, "negative": neg,
                     "unlabelled": int(col.isna().sum()), "paper_positive": pp, "paper_negative": pn})
        for ours, theirs, cls in ((pos, pp, "positive"), (neg, pn, "negative")):
            if theirs and abs(ours - theirs) > tolerance * theirs:
                warns.append(f"{PAPER_NAMES[task]}: {ours} {cls} cases vs {theirs} in the paper "
                             f"({(ours - theirs) / theirs:+.0%}); check the inputs (subset of slides? other clinical "
                             "release? label rule?)")
    return pd.DataFrame(rows), warns


def prepare(features: str | Path, clinical: str | Path, expression: str | Path, *, suite: str = "tcga_brca",
            expression_log2: bool = False, her2_column: str | None = None, odx_column: str | None = None,
            odx_quantile: float = 0.85, odx_threshold: float | None = None, slides: str | Path | None = None,
            drop_incomplete: bool = False, check_features: bool = False, count_tolerance: float = 0.2) -> Prepared:
    """Read, label, validate and assemble (nothing is written; see :func:`write_outputs`)."""
    from benchmarks.data.validate import bad_slide_ids
    from benchmarks.suites import load_suite

    st = load_suite(suite)
    paper = {t: spec.paper_counts for t, spec in st.tasks.items()}
    problems: list[DataProblem] = []
    warns: list[str] = []

    # slides
    paths, found = list_feature_files(features)
    problems += found
    problems += check_feature_files(paths, full=check_features)
    if slides is not None:
        expected = read_slide_list(slides)
        present = set(paths)
        for s in expected:
            if s not in present:
                problems.append(problem("missing_file", s, Path(features),
                                        f"slide without features: listed in {Path(slides).name} but no feature file "
                                        f"{s}.h5/.pt. Extract it, or use --drop-incomplete."))
    # clinical
    clin = read_clinical(clinical)
    try:
        er_call = binary_status(clin, ER_ALIASES, "ER status (needed for the HR+/HER2- reference of the ODX cut)")
    except DataError:
        if not (odx_column or odx_threshold is not None):
            raise
        none = pd.Series([None] * len(clin), index=clin["case_id"].to_numpy(), dtype=object)
        er_call = LabelCall(none, pd.Series(["no ER column"] * len(clin), index=none.index, dtype=object))
    calls = {"er": er_call, "pr": binary_status(clin, PR_ALIASES, "PR status"), "her2": her2_status(clin, her2_column)}
    if odx_column:
        calls["odx_given"] = odx_given_labels(clin, odx_column)
    per_case, dup = collapse_cases(calls, clin.attrs.get("source"))
    problems += dup
    # expression, RS, ODX
    expr = read_expression(expression, already_log2=expression_log2)
    warns += [f"expression: {n}" for n in expr.notes]
    scores = None
    try:
        scores = recurrence_score(expr.values, str(expression))
    except DataError:
        if not odx_column:
            raise
    labels = per_case.copy()
    if odx_column:
        labels["odx"] = labels.pop("odx_given")
        labels["odx_reason"] = labels.pop("odx_given_reason")
        rule = None
        if scores is not None:
            labels = labels.join(scores, how="left")
    else:
        odx, ref, rule = odx_labels(scores["rs"], per_case["er"], per_case["pr"], per_case["her2"],
                                    odx_quantile, odx_threshold)
        labels = labels.join(scores, how="outer")
        labels["odx"] = odx.reindex(labels.index)
        labels["hr_pos_her2_neg"] = ref.reindex(labels.index)
        labels["odx_reason"] = np.where(labels["rs"].notna(),
                                        np.where(labels["odx"] == "H", f"RS > {rule.threshold:.2f}"
                                                 if rule.kind == "quantile" else f"RS >= {rule.threshold:g}",
                                                 "RS below the cut"), "no tumour RNA sample")
    labels["expression_sample"] = pd.Series(expr.sample_of_case).reindex(labels.index)
    labels.index.name = "case_id"

    # slides -> cases
    rows = []
    for sid in sorted(paths):
        case = sid[:12].upper()
        rows.append({"slide_id": sid, "case_id": case, "tss": case[5:7]})
        if case not in per_case.index:
            problems.append(problem("missing_clinical", sid, paths[sid],
                                    f"features without clinical rows: case {case} is not in the clinical table "
                                    f"{Path(clinical).name}. Use the clinical table of the same TCGA release, or "
                                    "--drop-incomplete."))
        if case not in expr.values.index:
            problems.append(problem("missing_omics", sid, paths[sid],
                                    f"case {case} has no tumour sample in the expression matrix "
                                    f"{Path(expression).name}; "
                                    "the omics methods need omics for every training case (and ODX needs the RNA "
                                    "score). Use --drop-incomplete to drop such slides."))
    cohort_level = [p for p in problems if p.slide_id is None]
    if cohort_level or (problems and not drop_incomplete):
        n_bad = len(bad_slide_ids(problems))
        tail = (f" Fix them, or rerun with --drop-incomplete to drop the {n_bad} slide(s) concerned (recorded in "
                "prepare_report.json)." if n_bad and not cohort_level else " Fix them and rerun.")
        raise DataError(cohort_level or problems, header=f"{len(cohort_level or problems)} problem(s) with the "
                                                         f"inputs.{tail}")
    kept = problems
    dropped = set(bad_slide_ids(kept))
    manifest = pd.DataFrame(rows)
    manifest = manifest.loc[~manifest["slide_id"].isin(dropped)].reset_index(drop=True)
    if manifest.empty:
        raise DataError(kept or [problem("missing_file", None, features, "no slide left")],
                        header="no usable slide left after dropping the incomplete ones")
    lab = labels.reindex(manifest["case_id"])
    for t in ("her2", "pr", "odx", "er"):
        manifest[t] = lab[t].to_numpy()
    manifest["odx_rs"] = lab["rs"].to_numpy() if "rs" in lab else np.nan
    manifest["expression_sample"] = lab["expression_sample"].to_numpy()
    manifest = manifest[["slide_id", "case_id", "her2", "pr", "odx", "er", "odx_rs", "tss", "expression_sample"]]

    # omics: log2(x+1) of every gene for the manifest's cases; genes with missing values dropped
    cases = sorted(set(manifest["case_id"]) & set(expr.values.index))
    omics = expr.values.loc[cases]
    finite = np.isfinite(omics.to_numpy()).all(axis=0)
    if not finite.all():
        warns.append(f"omics: {int((~finite).sum())} gene(s) with missing values dropped from omics.csv")
        omics = omics.loc[:, finite]
    counts, count_warns = class_counts(manifest, paper, count_tolerance)
    warns += count_warns
    report = {
        "suite": suite,
        "inputs": {"features": str(Path(features).resolve()), "clinical": str(Path(clinical).resolve()),
                   "clinical_sha256": file_sha256(Path(clinical)), "clinical_id_column": clin.attrs.get("id_column"),
                   "expression": str(Path(expression).resolve()), "expression_sha256": file_sha256(Path(expression)),
                   "expression_log2_given": expression_log2, "slides": None if slides is None else str(slides)},
        "rules": {
            "case_id": "first 12 characters of the slide barcode",
            "pr": "pr_status_by_ihc Positive=1, Negative=0, other values unlabelled",
            "her2": (f"precomputed column {her2_column!r}" if her2_column else
                     "IHC 3+ or FISH positive -> positive; else IHC 0/1+ or FISH negative -> negative; "
                     "else unlabelled"),
            "odx": (f"precomputed column {odx_column!r}" if odx_column else
                    {"score": "Paik 2004 21-gene RS, genes 0..15-rescaled over the RNA cohort (genefu)",
                     "cut": rule.kind, "quantile": None if rule.kind == "threshold" else rule.quantile,
                     "rs_threshold": rule.threshold, "n_hr_pos_her2_neg": rule.n_reference,
                     "reference": "Howard et al. npj Breast Cancer 2023 (fmhoward/DLRS createCrossfoldsRS)"}),
            "omics": "log2(x+1) of every gene; gene selection and z-scoring happen per training fold at run time"},
        "n_slides": int(len(manifest)), "n_cases": int(manifest["case_id"].nunique()),
        "n_rna_cases": int(len(expr.values)), "n_genes": int(omics.shape[1]),
        "clinical_cases_without_slides": int(len(set(per_case.index) - set(manifest["case_id"]))),
        "dropped_slides": [{"slide_id": p.slide_id, "kind": p.kind, "message": p.message} for p in kept],
        "counts": counts.to_dict(orient="records"),
        "label_reasons": {t: labels[f"{t}_reason"].reindex(manifest["case_id"].unique()).value_counts().to_dict()
                          for t in ("her2", "pr", "odx") if f"{t}_reason" in labels},
        "warnings": warns,
    }
    return Prepared(manifest=manifest, labels=labels, omics=omics, counts=counts, report=report, warnings=warns)


def write_outputs(prep: Prepared, out: str | Path, features: str | Path, suite: str = "tcga_brca") -> dict[str, Path]:
    """Write the files the suite's ``[data]`` table names, plus labels.csv, the report, a link to
    the features folder and a ``.gitignore`` (``*``) so the folder never enters git."""
    from benchmarks.suites import load_suite

    files = load_suite(suite).raw.get("data", {})
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = {"manifest": out / files.get("manifest", "manifest.csv"), "omics": out / files.get("omics", "omics.csv"),
               "labels": out / "labels.csv", "report": out / "prepare_report.json",
               "features": out / files.get("features", "features")}
    (out / ".gitignore").write_text("# written by python -m benchmarks prepare: patient data, never commit\n*\n")
    prep.manifest.to_csv(written["manifest"], index=False)
    prep.omics.to_csv(written["omics"], index_label="case_id", float_format="%.5g")
    prep.labels.to_csv(written["labels"], index_label="case_id", float_format="%.6g")
    link, target = written["features"], Path(features).resolve()
    if link.is_symlink():
        link.unlink()
    if link.exists():
        if link.resolve() != target:
            raise ValueError(f"{link} exists and is not a link to {target}; remove it or choose another --out")
    else:
        try:
            os.symlink(target, link, target_is_directory=True)
        except OSError as e:  # e.g. Windows without symlink rights
            raise OSError(f"cannot link {link} -> {target} ({e}); copy or move the features folder to {link}") from None
    written["report"].write_text(json.dumps(prep.report, indent=2, default=str))
    return written


# ----------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------
def add_arguments(p) -> None:
    p.add_argument("--suite", default="tcga_brca", help="suite name or .toml (paper counts, output file names)")
    p.add_argument("--features", required=True, help="folder of <slide barcode>.h5 / .pt feature files")
    p.add_argument("--clinical", required=True, help="GDC clinical_patient Biotab TSV or cBioPortal "
                                                     "data_clinical_patient.txt")
    p.add_argument("--expression", required=True, help="RNA matrix, genes x samples, TCGA sample barcodes as columns")
    p.add_argument("--out", default=None, help="output folder (default: data_manifests/<suite>/)")
    p.add_argument("--expression-log2", action="store_true", help="the matrix is already log2(x+1) (e.g. Xena HiSeqV2)")
    p.add_argument("--her2-column", default=None, help="use this precomputed Positive/Negative column (e.g. HER2Calc)")
    p.add_argument("--odx-column", default=None, help="use precomputed ODX labels H/L from this clinical column")
    p.add_argument("--odx-quantile", type=float, default=0.85,
                   help="ODX high = RS above this quantile among HR+/HER2- cases (default 0.85, Howard et al. 2023)")
    p.add_argument("--odx-threshold", type=float, default=None,
                   help="fixed RS cut instead of the quantile: high iff RS >= T (31: Paik 2004; 26: TAILORx)")
    p.add_argument("--slides", default=None, help="optional list of expected slides (text, or GDC manifest with a "
                                                  "filename column): those without features are reported")
    p.add_argument("--drop-incomplete", action="store_true",
                   help="drop slides without features/clinical rows/omics (recorded) instead of stopping")
    p.add_argument("--check-features", action="store_true", help="read every feature file fully (slow)")
    p.add_argument("--count-tolerance", type=float, default=0.2,
                   help="warn when a class count differs from the paper's by more than this fraction (default 0.2)")


def main(args) -> int:
    """Build the TCGA-BRCA manifest, labels (HER2, PR, ODX) and omics table from public tables."""
    from tabulate import tabulate

    from benchmarks.suites import SUITE_DIR, load_suite

    suite_name = load_suite(args.suite).name
    out = Path(args.out) if args.out else SUITE_DIR / suite_name
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        prep = prepare(args.features, args.clinical, args.expression, suite=args.suite,
                       expression_log2=args.expression_log2, her2_column=args.her2_column,
                       odx_column=args.odx_column, odx_quantile=args.odx_quantile, odx_threshold=args.odx_threshold,
                       slides=args.slides, drop_incomplete=args.drop_incomplete, check_features=args.check_features,
                       count_tolerance=args.count_tolerance)
    extra = [str(w.message) for w in caught]
    prep.report["warnings"] = prep.warnings + extra
    written = write_outputs(prep, out, args.features, args.suite)
    r = prep.report
    print(f"{r['n_slides']} slides, {r['n_cases']} cases, {r['n_genes']} genes -> {out}")
    if r["dropped_slides"]:
        print(f"dropped {len(r['dropped_slides'])} slide problem(s) (--drop-incomplete; listed in {written['report']})")
    odx = r["rules"]["odx"]
    if isinstance(odx, dict):
        cut = (f"RS > {odx['rs_threshold']:.2f} (the {odx['quantile'] * 100:g}th percentile of "
               f"{odx['n_hr_pos_her2_neg']} HR+/HER2- cases)" if odx["cut"] == "quantile"
               else f"RS >= {odx['rs_threshold']:g}")
        print(f"ODX high risk: {cut}")
    print("class counts (patients) next to the paper's:")
    print(tabulate(prep.counts, headers="keys", tablefmt="github", showindex=False))
    for w in prep.report["warnings"]:
        print(f"warning: {w}", file=sys.stderr)
    print(f"next: python -m benchmarks run --suite {suite_name} --data {out}")
    return 0
