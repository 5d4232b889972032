"""Split files in and out: reuse a published split (``run --splits PATH``), export a run's splits.

Formats read (detected from the path):

* ``ours``: the CSV ``splits export`` writes, one row per slide and fold:
  ``task, seed, fold, case_id, slide_id, label, part`` (part: train / val / test).
* ``clam``: a folder of CLAM ``splits_{k}.csv`` files (``create_splits_seq.py`` / ``save_splits`` in
  mahmoodlab/CLAM ``dataset_modules/dataset_generic.py``): an unnamed index column, then columns
  ``train, val, test`` holding slide ids, shorter columns padded with empty cells. One file per
  fold; CLAM draws the k splits independently, so test parts may overlap across folds.
* ``pathobench``: a Patho-Bench ``k=all.tsv`` (mahmoodlab/Patho-Bench ``DataSplit``): tab-separated,
  ``case_id, slide_id``, label column(s), ``fold_0 .. fold_{K-1}`` holding ``train`` / ``test``
  (``val`` when present). The published files have no validation part: one is drawn from each
  fold's training patients with the protocol's ``val_frac`` (patient-grouped, stratified, as
  :func:`benchmarks.protocol.make_splits` does) and the run records that it did.

Every imported split is checked against the manifest: a slide the manifest lacks or whose patient
differs is an error naming it; slides without a label for the task are dropped (never mapped to a
class); a patient in two parts of one fold is refused with the patients listed, unless
``--allow-slide-level`` reproduces an official slide-level split on purpose (recorded in every
table's footer).
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from benchmarks.protocol import PARTS, Split, inner_validation, load_splits

FORMATS = ("ours", "clam", "pathobench")
OURS_COLUMNS = ["task", "seed", "fold", "case_id", "slide_id", "label", "part"]
_CLAM_FILE = re.compile(r"splits_(\d+)\.csv$")


@dataclass
class Imported:
    """An imported split of one task: its folds and how it was made."""

    splits: list[Split]
    source: dict[str, Any] = field(default_factory=dict)  # path, format, sha256, folds, notes, slide_level


def detect_format(path: Path) -> str:
    path = Path(path)
    if path.is_dir():
        if any(_CLAM_FILE.search(p.name) for p in path.iterdir()):
            return "clam"
        raise ValueError(f"--splits {path}: a folder must hold CLAM files splits_0.csv, splits_1.csv, ...")
    if not path.is_file():
        raise FileNotFoundError(f"--splits {path}: no such file or folder")
    header = path.open(encoding="utf-8", errors="replace").readline()
    cols = [c.strip() for c in re.split(r"[\t,]", header.strip())]
    if any(re.fullmatch(r"fold_\d+", c) for c in cols):
        return "pathobench"
    if {"fold", "slide_id", "part"} <= set(cols):
        return "ours"
    raise ValueError(f"--splits {path}: unknown format (header {header.strip()[:120]!r}); expected our export "
                     f"({', '.join(OURS_COLUMNS)}), a Patho-Bench k=all.tsv (fold_0, fold_1, ...) or a folder of "
                     "CLAM splits_k.csv files")


def file_digest(path: Path) -> str:
    path = Path(path)
    files = sorted(p for p in path.iterdir() if _CLAM_FILE.search(p.name)) if path.is_dir() else [path]
    h = hashlib.sha256()
    for p in files:
        h.update(p.name.encode() + b"\0" + p.read_bytes())
    return h.hexdigest()[:16]


# ------------------------------------------------------------------------------------------
# Reading: each format to a long table (fold, slide_id, part[, case_id])
# ------------------------------------------------------------------------------------------
def _read_clam(folder: Path) -> pd.DataFrame:
    files = sorted(((int(_CLAM_FILE.search(p.name).group(1)), p) for p in folder.iterdir()
                    if _CLAM_FILE.search(p.name)))
    if [k for k, _ in files] != list(range(len(files))):
        raise ValueError(f"--splits {folder}: CLAM files must be splits_0.csv .. splits_{{k-1}}.csv without gaps; "
                         f"found {[p.name for _, p in files]}")
    rows = []
    for k, p in files:
        df = pd.read_csv(p, dtype=str)
        missing = [c for c in PARTS if c not in df.columns]
        if missing:
            raise ValueError(f"{p}: a CLAM split file needs columns train, val, test; missing {missing}")
        for part in PARTS:
            ids = df[part].dropna().str.strip()
            rows.append(pd.DataFrame({"fold": k, "slide_id": ids[ids != ""], "part": part}))
    return pd.concat(rows, ignore_index=True)


def _read_pathobench(path: Path) -> pd.DataFrame:
    df = pd.read_csv(path, sep="\t" if path.suffix == ".tsv" else ",", dtype=str)
    for col in ("case_id", "slide_id"):
        if col not in df.columns:
            raise ValueError(f"{path}: a Patho-Bench split needs a {col} column; columns are {list(df.columns)}")
    folds = sorted((c for c in df.columns if re.fullmatch(r"fold_\d+", c)), key=lambda c: int(c[5:]))
    long = df.melt(id_vars=["case_id", "slide_id"], value_vars=folds, var_name="fold", value_name="part")
    long["fold"] = long["fold"].str[5:].astype(int)
    long["part"] = long["part"].str.strip().str.lower()
    bad = sorted(set(long["part"].dropna()) - set(PARTS) - {"-1"})
    if bad:
        raise ValueError(f"{path}: fold cells must be train, val or test; found {bad}")
    return long[long["part"].isin(PARTS)].reset_index(drop=True)  # -1: not used in that fold (few-shot)


def _read_ours(path: Path, task: str, seed: int) -> pd.DataFrame:
    df = pd.read_csv(path, dtype={"slide_id": str, "case_id": str, "task": str})
    if "task" in df.columns:
        if task not in set(df["task"]):
            raise ValueError(f"{path}: no split for task {task!r}; the file holds {sorted(set(df['task']))}")
        df = df[df["task"] == task]
    if "seed" in df.columns:
        seeds = sorted(set(df["seed"].astype(int)))
        if len(seeds) > 1:
            if seed not in seeds:
                raise ValueError(f"{path}: no split for seed {seed} of task {task}; the file holds seeds {seeds}")
            df = df[df["seed"].astype(int) == seed]
    cols = ["fold", "slide_id", "part"] + (["case_id"] if "case_id" in df.columns else [])
    return df[cols].assign(fold=lambda d: d["fold"].astype(int)).reset_index(drop=True)


# ------------------------------------------------------------------------------------------
# Checking against the manifest and building Splits
# ------------------------------------------------------------------------------------------
def _listed(ids: list[str], n: int = 8) -> str:
    return ", ".join(ids[:n]) + (f" and {len(ids) - n} more" if len(ids) > n else "")


def _carve_validation(t: pd.DataFrame, val_frac: float, seed: int) -> pd.DataFrame:
    """A validation part from the training rows, by make_splits' own rule (protocol.inner_validation)."""
    tr = t[t["part"] == "train"]
    _, iva = inner_validation(tr, val_frac, seed)
    t = t.copy()
    t.loc[tr.index[iva], "part"] = "val"
    return t


def read_split_file(path: str | Path, manifest: pd.DataFrame, task: str, seed: int = 0, val_frac: float = 0.15,
                    allow_slide_level: bool = False) -> Imported:
    """The folds a split file defines for ``task``, checked against ``manifest``."""
    path = Path(path)
    fmt = detect_format(path)
    long = {"clam": lambda: _read_clam(path), "pathobench": lambda: _read_pathobench(path),
            "ours": lambda: _read_ours(path, task, seed)}[fmt]()
    if long.empty:
        raise ValueError(f"--splits {path}: no slide in any fold")
    long["slide_id"] = long["slide_id"].astype(str).str.strip()
    dup = long[long.duplicated(["fold", "slide_id"], keep=False)]
    if len(dup):
        ex = [f"fold {f}: {s}" for f, s in dup[["fold", "slide_id"]].drop_duplicates().itertuples(index=False)]
        raise ValueError(f"--splits {path}: {len(ex)} slide(s) listed twice in one fold ({_listed(ex)})")
    man = manifest.set_index(manifest["slide_id"].astype(str))
    unknown = sorted(set(long["slide_id"]) - set(man.index))
    if unknown:
        raise ValueError(f"--splits {path}: {len(unknown)} slide(s) of the split file are not in the manifest "
                         f"({_listed(unknown)}); the split belongs to other data, or the slide ids differ")
    if "case_id" in long.columns:
        own = man.loc[long["slide_id"], "case_id"].astype(str).to_numpy()
        wrong = long.loc[own != long["case_id"].astype(str).to_numpy(), ["slide_id", "case_id"]].drop_duplicates()
        if len(wrong):
            ex = [f"{s} ({c} in the file, {man.at[s, 'case_id']} in the manifest)"
                  for s, c in wrong.itertuples(index=False)]
            raise ValueError(f"--splits {path}: {len(ex)} slide(s) belong to another patient in the manifest "
                             f"({_listed(ex, 4)})")
    long["case_id"] = man.loc[long["slide_id"], "case_id"].astype(str).to_numpy()
    label = man.loc[long["slide_id"], task]
    notes: list[str] = []
    unlabelled = sorted(set(long.loc[label.isna().to_numpy(), "slide_id"]))
    if unlabelled:
        notes.append(f"{len(unlabelled)} slide(s) of the file have no {task} label and were left out")
    long = long[label.notna().to_numpy()].copy()
    long["label"] = man.loc[long["slide_id"], task].astype(int).to_numpy()
    labelled = set(man.index[man[task].notna()])
    unused = labelled - set(long["slide_id"])
    if unused:
        notes.append(f"{len(unused)} labelled slide(s) of the manifest are in no fold of the file")
    n_folds = int(long["fold"].max()) + 1
    carved = False
    splits = []
    leaks: list[str] = []
    for k in range(n_folds):
        t = long[long["fold"] == k][["slide_id", "case_id", "label", "part"]].reset_index(drop=True)
        spread = t.groupby("case_id")["part"].nunique()
        if (spread > 1).any():
            leaks += [f"fold {k}: {c} ({'+'.join(sorted(set(t.loc[t.case_id == c, 'part'])))})"
                      for c in spread.index[spread > 1]]
        if not (t["part"] == "val").any():
            t = _carve_validation(t, val_frac, seed)
            carved = True
        splits.append(Split(task, k, seed, t))
    if leaks and allow_slide_level:  # checked on every job from now on by slide only
        for sp in splits:
            sp.table["level"] = "slide"
    if leaks and not allow_slide_level:
        raise ValueError(f"--splits {path}: {len(leaks)} patient(s) are in more than one part of a fold "
                        f"({_listed(leaks, 6)}): their slides would be scored by a model trained on the same "
                        "patient. Use a patient-level split, or pass --allow-slide-level to reproduce an official "
                        "slide-level split on purpose (every table then says so).")
    if carved:
        notes.append(f"the file has no validation part: one was drawn from each fold's training patients "
                     f"(val_frac {val_frac}, seed {seed})")
    tests = pd.concat([s.table.loc[s.table["part"] == "test", "slide_id"] for s in splits])
    if tests.duplicated().any():
        notes.append("test parts overlap across folds (independent splits, as CLAM draws them)")
    for s in splits:
        s.check()
    return Imported(splits, {"path": str(path), "format": fmt, "sha256": file_digest(path), "folds": n_folds,
                             "slide_level": bool(allow_slide_level and leaks), "notes": notes})


# ------------------------------------------------------------------------------------------
# Writing
# ------------------------------------------------------------------------------------------
def export_run(run_dir: str | Path) -> pd.DataFrame:
    """Every split of a run folder (``<run>/splits/*.csv``) in our export format."""
    files = sorted((Path(run_dir) / "splits").glob("*.csv"))
    if not files:
        raise FileNotFoundError(f"{Path(run_dir) / 'splits'}: no split files; is {run_dir} a run folder?")
    tables = [s.table.assign(task=s.task, seed=s.seed, fold=s.fold) for f in files for s in load_splits(f)]
    return pd.concat(tables, ignore_index=True)[OURS_COLUMNS].sort_values(["task", "seed", "fold", "part", "slide_id"])


def write_clam(table: pd.DataFrame, folder: Path) -> list[Path]:
    """CLAM ``splits_{k}.csv`` files (one task and seed) from our export format."""
    if table["task"].nunique() != 1 or table["seed"].nunique() != 1:
        raise ValueError("CLAM split files hold one task and one seed: pass --task and --seed")
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for k, t in table.groupby("fold"):
        cols = {p: t.loc[t["part"] == p, "slide_id"].reset_index(drop=True) for p in PARTS}
        df = pd.concat(cols, axis=1)
        path = folder / f"splits_{int(k)}.csv"
        df.to_csv(path)
        out.append(path)
    return out


def add_arguments(p) -> None:
    sub = p.add_subparsers(dest="action", metavar="action", required=True)
    e = sub.add_parser("export", help="write a run's splits (case_id, slide_id, fold, part) for reuse")
    e.add_argument("--run", required=True, help="run folder (results/<suite>/<run>)")
    e.add_argument("--out", required=True, help="output CSV (ours) or folder (clam)")
    e.add_argument("--format", choices=("ours", "clam"), default="ours")
    e.add_argument("--task", default=None, help="only this task (clam: required when the run has several)")
    e.add_argument("--seed", type=int, default=None, help="only this seed")


def main(args) -> int:
    """Export a run's splits (our CSV, or CLAM split files) for reuse with ``run --splits``."""
    if args.action == "export":
        table = export_run(args.run)
        if args.task:
            table = table[table["task"] == args.task]
        if args.seed is not None:
            table = table[table["seed"] == args.seed]
        if table.empty:
            raise ValueError(f"{args.run}: no split for task {args.task} seed {args.seed}")
        if args.format == "clam":
            paths = write_clam(table, Path(args.out))
            print(f"{len(paths)} CLAM split files in {args.out}")
        else:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            table.to_csv(args.out, index=False)
            print(f"{len(table)} rows ({table['task'].nunique()} task(s), {table['fold'].nunique()} folds) -> {args.out}")
        return 0
