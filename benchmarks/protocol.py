"""The evaluation protocol as data, and leak-free patient-level splits (DESIGN.md "Protocol").

5-fold patient-level stratified CV (``StratifiedGroupKFold`` on case ids), and inside each
training part a stratified patient-level validation split (15%) used for early stopping,
checkpoint and threshold choice. The test fold is never used for any choice. Splits are saved
as CSV with a content hash and checked for leaks on every job.

    python -m benchmarks config --suite tcga_brca    # print the resolved protocol
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold

from benchmarks.hashing import stable_hash

PARTS = ("train", "val", "test")
FEATURE_NORMS = ("none", "train_zscore")  # patch-feature standardisation (benchmarks/data/normalize.py)


@dataclass(frozen=True)
class ProtocolConfig:
    """Protocol and training settings shared by every method (fairness: same folds, same loop)."""

    n_folds: int = 5  # paper: 5-fold CV, patient-level
    val_frac: float = 0.15  # validation share of each training part (patients)
    threshold: str = "0.5"  # "0.5" (official argmax) | "val_f1" | "val_youden": ACC/F1 threshold
    max_epochs: int = 20
    min_epochs: int = 3  # no early stop before this many epochs
    patience: int = 5  # epochs without a better validation AUC before stopping
    lr: float = 2e-4  # MoMKD run.sh (AdamW)
    weight_decay: float = 1e-4  # MoMKD run.sh
    scheduler: str = "cosine"  # "cosine" | "none"
    grad_clip: float = 16.0  # MoMKD run.sh passes GRAD_ACCUMULATION=16 as clip_grad_norm_ max-norm
    balanced_sampling: bool = True  # class-balanced sampling with replacement (MoMKD/CLAM option)
    device: str = "auto"  # "auto" | "cpu" | "cuda"
    bf16: bool = True  # bf16 autocast on CUDA
    cpu_bf16: bool = False  # bf16 autocast on CPU too (AVX512-BF16/AMX GEMMs ~2x faster; not the official fp32)
    deterministic: bool = True  # torch deterministic algorithms on CPU
    feature_norm: str = "none"  # "none" (features as given) | "train_zscore" (fitted on the training part)
    omics_genes: int = 0  # genes kept per fold by ANOVA F on the training cases (0 = all; official MoMKD: 768)
    batch_size: int = 1  # slides per optimizer step; > 1 only for models with a padded path (batching.py)
    compile: bool = False  # torch.compile the model's forward (dynamic shapes); off: official eager code

    def __post_init__(self) -> None:
        if self.n_folds < 2:
            raise ValueError(f"n_folds must be >= 2, got {self.n_folds}")
        if not 0 < self.val_frac < 0.5:
            raise ValueError(f"val_frac must be in (0, 0.5), got {self.val_frac}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.feature_norm not in FEATURE_NORMS:
            raise ValueError(f"feature_norm must be one of {FEATURE_NORMS}, got {self.feature_norm!r}")
        if self.threshold not in ("0.5", "val_f1", "val_youden"):
            raise ValueError(f"threshold must be '0.5', 'val_f1' or 'val_youden', got {self.threshold!r}")

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> "ProtocolConfig":
        d = {k: v for k, v in (d or {}).items() if v is not None}
        known = {f.name for f in dataclasses.fields(cls)}
        bad = set(d) - known
        if bad:
            raise KeyError(f"unknown protocol settings {sorted(bad)}; valid: {sorted(known)}")
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def hash(self) -> str:
        return stable_hash(self.to_dict(), 12)


class LeakError(RuntimeError):
    """A patient (case) or slide appears in more than one part of a split."""


@dataclass
class Split:
    """One fold: the slide ids of each part, with their cases and labels."""

    task: str
    fold: int
    seed: int
    table: pd.DataFrame  # columns slide_id, case_id, label, part

    def ids(self, part: str) -> list[str]:
        return self.table.loc[self.table["part"] == part, "slide_id"].tolist()

    @property
    def train(self) -> list[str]:
        return self.ids("train")

    @property
    def val(self) -> list[str]:
        return self.ids("val")

    @property
    def test(self) -> list[str]:
        return self.ids("test")

    @property
    def slide_level(self) -> bool:
        """An imported official split allowed to put one patient's slides in two parts
        (``run --splits FILE --allow-slide-level``): only slides are then checked."""
        return "level" in self.table.columns and bool((self.table["level"] == "slide").all())

    def check(self, require_val: bool = True) -> None:
        """Fail loudly if any case or slide is in two parts, or a part is empty (the validation part
        may be absent only where a protocol has none: ``require_val=False``)."""
        check_no_leak(self.table, where=f"task {self.task} fold {self.fold} seed {self.seed}",
                      required=PARTS if require_val else ("train", "test"),
                      keys=("slide_id",) if self.slide_level else ("case_id", "slide_id"))


def check_no_leak(table: pd.DataFrame, where: str = "split", required: tuple[str, ...] = PARTS,
                  keys: tuple[str, ...] = ("case_id", "slide_id")) -> None:
    for key in keys:
        n_parts = table.groupby(key)["part"].nunique()
        bad = n_parts[n_parts > 1]
        if len(bad):
            ex = bad.index[:5].tolist()
            raise LeakError(f"{where}: {len(bad)} {key.replace('_id', '')}(s) appear in more than one of "
                            f"train/val/test, e.g. {ex}. A patient must be in exactly one part.")
    for part in required:
        if not (table["part"] == part).any():
            raise LeakError(f"{where}: the {part} part is empty (too few patients for {table.shape[0]} slides?)")


def check_external_disjoint(internal: pd.DataFrame, external: pd.DataFrame, names: tuple[str, str] =
                            ("internal", "external")) -> None:
    """An external cohort must share no patient and no slide with the internal one (its AUC would
    be partly on training slides). Raises ``ValueError`` listing the overlap."""
    problems = []
    for key in ("case_id", "slide_id"):
        both = sorted(set(internal[key].astype(str)) & set(external[key].astype(str)))
        if both:
            ex = ", ".join(both[:8]) + (f" and {len(both) - 8} more" if len(both) > 8 else "")
            problems.append(f"{len(both)} {key.replace('_id', '')}(s) in both: {ex}")
    if problems:
        raise ValueError(f"the {names[1]} cohort overlaps the {names[0]} one ({'; '.join(problems)}); an external "
                         "validation must use other patients. Remove them from the external manifest.")


def _label_per_case(df: pd.DataFrame) -> pd.Series:
    per_case = df.groupby("case_id")["label"].agg(lambda s: s.mode().iloc[0])
    return per_case


def inner_validation(train: pd.DataFrame, val_frac: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Positions (train, val) of a training part's patient-grouped, stratified validation split:
    the first fold of ``StratifiedGroupKFold(round(1 / val_frac), shuffle, seed + 1)``."""
    inner = StratifiedGroupKFold(n_splits=max(2, int(round(1.0 / val_frac))), shuffle=True, random_state=seed + 1)
    with warnings.catch_warnings():  # tiny cohorts: fewer minority patients than inner folds is fine
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        return next(inner.split(train, train["label"], groups=train["case_id"]))


def make_splits(manifest: pd.DataFrame, task: str, n_folds: int = 5, val_frac: float = 0.15,
                seed: int = 0) -> list[Split]:
    """Patient-grouped, label-stratified folds over the slides labelled for ``task``.

    Outer: ``StratifiedGroupKFold(n_folds, shuffle, seed)``; inner validation: the first fold of a
    ``StratifiedGroupKFold(round(1/val_frac))`` over the training part (seed + 1). Unlabelled
    slides are excluded (never mapped to a class).
    """
    df = manifest.loc[manifest[task].notna(), ["slide_id", "case_id", task]].rename(columns={task: "label"})
    df = df.reset_index(drop=True)
    df["label"] = df["label"].astype(int)
    n_cases = df["case_id"].nunique()
    counts = _label_per_case(df).value_counts()
    if n_cases < n_folds * 2 or counts.min() < n_folds:
        raise ValueError(f"task {task}: {n_cases} labelled patients (class counts {counts.to_dict()}) are too "
                         f"few for {n_folds}-fold stratified CV")
    outer = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    splits = []
    for fold, (tr_idx, te_idx) in enumerate(outer.split(df, df["label"], groups=df["case_id"])):
        itr, iva = inner_validation(df.iloc[tr_idx], val_frac, seed)
        part = np.empty(len(df), dtype=object)
        part[te_idx] = "test"
        part[tr_idx[itr]] = "train"
        part[tr_idx[iva]] = "val"
        t = df.assign(part=part)
        s = Split(task, fold, seed, t)
        s.check()
        splits.append(s)
    # folds' test parts are disjoint and cover every labelled slide
    tests = pd.concat([s.table.loc[s.table.part == "test", "slide_id"] for s in splits])
    if tests.duplicated().any() or len(tests) != len(df):
        raise LeakError(f"task {task}: test folds overlap or miss slides")
    return splits


def splits_table(splits: list[Split]) -> pd.DataFrame:
    return pd.concat([s.table.assign(fold=s.fold, seed=s.seed, task=s.task) for s in splits], ignore_index=True)


def table_hash(table: pd.DataFrame) -> str:
    csv = table.sort_values(["fold", "slide_id"]).to_csv(index=False)
    return hashlib.sha256(csv.encode()).hexdigest()[:16]


def save_splits(splits: list[Split], path: Path) -> str:
    """Write the folds as CSV plus a ``.sha256`` file (each atomically: a crash or a full disk never
    leaves a half-written file); return the content hash. An existing file with other contents is an
    error (the run's data changed): use a new output folder."""
    from benchmarks.jobs import atomic_write_text

    table = splits_table(splits)
    h = table_hash(table)
    path = Path(path)
    hfile = path.with_suffix(".sha256")
    if path.exists():
        old = hfile.read_text().strip() if hfile.exists() else ""
        if not re.fullmatch(r"[0-9a-f]{8,64}", old):  # no or a damaged hash file: hash the CSV itself
            try:
                old = table_hash(pd.read_csv(path, dtype={"slide_id": str, "case_id": str}))
            except (ValueError, OSError):
                old = "unreadable"
        if old != h:
            raise ValueError(f"{path} holds other splits (hash {old}, now {h}): the manifest or seed changed "
                             "since this run started. Use a new --out folder or delete the old splits.")
        if not hfile.exists() or hfile.read_text().strip() != h:
            atomic_write_text(hfile, h + "\n")
        return h
    atomic_write_text(path, table.to_csv(index=False))
    atomic_write_text(hfile, h + "\n")
    return h


def load_splits(path: Path) -> list[Split]:
    table = pd.read_csv(path, dtype={"slide_id": str, "case_id": str})
    return [Split(str(g["task"].iloc[0]), int(f), int(g["seed"].iloc[0]),
                  g.drop(columns=["fold", "seed", "task"]).reset_index(drop=True))
            for f, g in table.groupby("fold")]


def add_arguments(parser) -> None:
    parser.add_argument("--suite", default="tcga_brca")
    parser.add_argument("--scale", choices=("tiny", "small", "paper"), default=None,
                        help="simulated cohort size, as `run --scale` (default: the suite's)")
    parser.add_argument("--data", default=None, help="as `run --data`: real features (no scale preset)")
    parser.add_argument("--recipe", choices=("shared", "official"), default="shared")
    parser.add_argument("--methods", default=None, help="comma-separated (default: all)")
    parser.add_argument("--max-epochs", type=int, default=None)
    parser.add_argument("--threshold", choices=("0.5", "val_f1", "val_youden"), default=None)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--feature-norm", choices=FEATURE_NORMS, default=None)


def main(args) -> int:
    """Print exactly the protocol, scale-preset widths and training recipes `run` uses with these flags."""
    from benchmarks import registry
    from benchmarks.recipes import resolve as resolve_recipe
    from benchmarks.runner import default_scale, resolve_protocol
    from benchmarks.suites import load_suite

    suite = load_suite(args.suite)
    scale = default_scale(suite, args)
    protocol = resolve_protocol(suite, scale, args)
    methods = [m.strip() for m in (args.methods or ",".join(registry.METHODS)).split(",") if m.strip()]
    recipes = {}
    for m in methods:
        spec = registry.get(m)
        r = resolve_recipe(spec, args.recipe, protocol, suite.name, suite.recipe_family,
                           args.max_epochs if args.recipe != "shared" else None)
        recipes[m] = r.summary()
    print(json.dumps({"suite": suite.name, "data": args.data or ("simulated" if scale else suite.name),
                      "scale": scale, "protocol": protocol.to_dict(), "protocol_hash": protocol.hash(),
                      "method_params": suite.params_for_scale(scale), "recipe": args.recipe,
                      "recipes": recipes}, indent=2))
    return 0
