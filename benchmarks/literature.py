"""Literature protocols of the classic MIL benchmarks and the numbers published under them.

``data_manifests/literature_protocols.toml`` holds each paper's protocol (folds, repeats, fold
scheme, metric, what its +- is) and, per mode, the choices it makes: ``as_published`` (the
paper's own, test-fold selection and data-set-wide normalisation included) and ``leak_free``
(the same, every choice on a validation part). ``results/paper/literature.csv`` holds the
published numbers with their source, the evidence level and the exact text they were transcribed
from. ``benchmarks/reproduce.py`` runs both modes; this module is the data and the pure
functions (splits, per-fold values, spreads) it needs.
"""
from __future__ import annotations

import dataclasses
import functools
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from sklearn.model_selection import KFold, StratifiedKFold, train_test_split

from benchmarks.hashing import stable_hash
from benchmarks.data.normalize import FeatureScaler
from benchmarks.metrics import binary_metrics, choose_threshold
from benchmarks.protocol import Split

PROTOCOLS_FILE = Path(__file__).resolve().parents[1] / "data_manifests" / "literature_protocols.toml"
PUBLISHED_FILE = Path(__file__).resolve().parents[1] / "results" / "paper" / "literature.csv"
MODES = ("as-published", "leak-free")
NORMS = ("dataset_zscore", "train_zscore", "none")
SELECTIONS = ("last", "max_test", "val")
THRESHOLDS = ("0.5", "test_roc", "val_youden")
SCHEMES = ("kfold", "stratified", "chunks")
SPREADS = ("std_folds", "sem_repeats", "std_repeats")
METRICS = ("acc", "auc")


@dataclass(frozen=True)
class ModeChoices:
    """What one mode of a protocol chooses, and on which data."""

    norm: str
    selection: str
    threshold: str
    val_frac: float

    def __post_init__(self) -> None:
        for name, value, allowed in (("norm", self.norm, NORMS), ("selection", self.selection, SELECTIONS),
                                     ("threshold", self.threshold, THRESHOLDS)):
            if value not in allowed:
                raise ValueError(f"{name} {value!r} not in {allowed}")
        needs_val = self.selection == "val" or self.threshold == "val_youden"
        if needs_val and not 0 < self.val_frac < 0.5:
            raise ValueError(f"selection {self.selection!r} / threshold {self.threshold!r} need a validation "
                             f"part (0 < val_frac < 0.5), got {self.val_frac}")

    @property
    def reads_test(self) -> bool:
        """Whether a choice of this mode reads the test fold (selection or threshold)."""
        return self.selection == "max_test" or self.threshold == "test_roc"

    def optimism(self) -> str:
        """Why numbers of this mode are optimistic ("" for a leak-free mode)."""
        why = []
        if self.selection == "max_test":
            why.append("best epoch chosen on the test fold")
        if self.threshold == "test_roc":
            why.append("threshold chosen on the test fold's ROC")
        if self.norm == "dataset_zscore":
            why.append("features standardised with test bags included")
        return "; ".join(why)


@dataclass(frozen=True)
class LiteratureProtocol:
    name: str
    title: str
    folds: int
    repeats: int
    fold_scheme: str
    metric: str
    spread: str
    epochs: int
    evidence: str
    as_published: ModeChoices
    leak_free: ModeChoices

    def __post_init__(self) -> None:
        if self.fold_scheme not in SCHEMES or self.metric not in METRICS or self.spread not in SPREADS:
            raise ValueError(f"literature protocol {self.name}: fold_scheme/metric/spread must be in "
                             f"{SCHEMES} / {METRICS} / {SPREADS}")
        if self.folds < 2 or self.repeats < 1:
            raise ValueError(f"literature protocol {self.name}: folds >= 2 and repeats >= 1")
        if self.leak_free.reads_test or self.leak_free.norm == "dataset_zscore":
            raise ValueError(f"literature protocol {self.name}: its leak_free mode reads test bags")

    def mode(self, mode: str) -> ModeChoices:
        if mode not in MODES:
            raise ValueError(f"unknown protocol mode {mode!r}; choose from {MODES}")
        return self.as_published if mode == "as-published" else self.leak_free

    def hash(self, mode: str) -> str:
        d = {**dataclasses.asdict(self), "mode": mode}
        d.pop("evidence"), d.pop("title")
        return stable_hash(d, 12)


def load_protocols(path: str | Path = PROTOCOLS_FILE) -> dict[str, LiteratureProtocol]:
    """The protocols of a TOML file (read once per process)."""
    return dict(_load_protocols(str(path)))


@functools.lru_cache(maxsize=4)
def _load_protocols(path: str) -> dict[str, LiteratureProtocol]:
    raw = tomllib.loads(Path(path).read_text())
    out = {}
    for name, d in raw.items():
        d = dict(d)
        modes = {m: ModeChoices(**d.pop(m)) for m in ("as_published", "leak_free")}
        out[name] = LiteratureProtocol(name=name, **d, **modes)
    return out


def load_published(path: str | Path = PUBLISHED_FILE) -> pd.DataFrame:
    """The published numbers (%, one row per suite x method x protocol)."""
    df = pd.read_csv(path)
    dup = df.duplicated(["suite", "method", "protocol", "metric"])
    if dup.any():
        raise ValueError(f"{path}: duplicate published rows {df[dup][['suite', 'method', 'protocol']].values.tolist()}")
    return df


# ------------------------------------------------------------------------------------------
# Splits
# ------------------------------------------------------------------------------------------
def literature_splits(manifest: pd.DataFrame, task: str, proto: LiteratureProtocol, mode: str,
                      repeat: int) -> list[Split]:
    """The folds of one repeat (its own shuffle, seeded by ``repeat``), each bag its own case.

    ``chunks`` (dsmil-wsi train_mil.py): one shuffle cut into ``folds`` test chunks of
    floor(N / folds) bags; the N mod folds remaining bags are always trained on, never tested. With
    a validation fraction, a stratified share of each training part becomes the validation part.
    """
    choices = proto.mode(mode)
    df = manifest.loc[manifest[task].notna(), ["slide_id", "case_id", task]].rename(columns={task: "label"})
    df = df.reset_index(drop=True)
    df["label"] = df["label"].astype(int)
    if df["case_id"].duplicated().any():
        raise ValueError(f"task {task}: literature protocols assume one bag per case")
    n, k = len(df), proto.folds
    idx = np.arange(n)
    if proto.fold_scheme == "kfold":
        tests = [te for _, te in KFold(k, shuffle=True, random_state=repeat).split(idx)]
    elif proto.fold_scheme == "stratified":
        tests = [te for _, te in StratifiedKFold(k, shuffle=True, random_state=repeat).split(idx, df["label"])]
    else:  # chunks
        perm = np.random.default_rng(repeat).permutation(n)
        size = n // k
        tests = [perm[i * size:(i + 1) * size] for i in range(k)]
    splits = []
    for fold, te in enumerate(tests):
        part = np.full(n, "train", dtype=object)
        part[te] = "test"
        tr = np.flatnonzero(part == "train")
        if choices.val_frac > 0:
            _, va = train_test_split(tr, test_size=choices.val_frac, random_state=repeat * 1000 + fold + 1,
                                     stratify=df["label"].to_numpy()[tr])
            part[va] = "val"
        s = Split(task, fold, repeat, df.assign(part=part))
        s.check(require_val=choices.val_frac > 0)
        splits.append(s)
    return splits


# ------------------------------------------------------------------------------------------
# Per-fold values and spreads
# ------------------------------------------------------------------------------------------
def fold_value(metric: str, threshold: str, y_test: np.ndarray, p_test: np.ndarray,
               y_val: np.ndarray | None = None, p_val: np.ndarray | None = None) -> float:
    """One fold's accuracy (at the mode's threshold) or AUC, as a fraction."""
    if metric == "auc":
        return float(binary_metrics(y_test, p_test)["auc"])
    if threshold == "0.5":
        thr = 0.5
    elif threshold == "test_roc":  # train_mil.py optimal_thresh: argmin(fpr - tpr) on the test fold
        thr = choose_threshold(y_test, p_test, "youden")
    else:
        thr = choose_threshold(y_val, p_val, "youden")
    return float(binary_metrics(y_test, p_test, thr)["acc"])


def max_over_epochs(metric: str, threshold: str, y_test: np.ndarray, per_epoch: Sequence[Sequence[float]]) -> tuple[float, int]:
    """train_mil.py's reported value: the best test value over the epochs (and that epoch)."""
    vals = [fold_value(metric, threshold, y_test, np.asarray(p)) for p in per_epoch]
    best = int(np.nanargmax(vals))
    return vals[best], best


def spread(values: pd.DataFrame, how: str) -> tuple[float, str]:
    """The +- of a protocol from fold values (columns ``repeat``, ``value``; fractions), and what
    it is: the protocol's ``how``, or ``std_folds`` when one repeat leaves no spread over repeats."""
    v = values["value"].to_numpy(dtype=float)
    means = values.groupby("repeat")["value"].mean().to_numpy()
    if how == "std_folds" or len(means) < 2:
        return float(np.std(v)), "std_folds"  # numpy's population std, as train_mil.py prints
    sd = float(np.std(means, ddof=1))
    return (sd / np.sqrt(len(means)) if how == "sem_repeats" else sd), how


def normalise(norm: str, train: list, val: list, test: list, every: list) -> tuple[list, list, list]:
    """``dataset_zscore`` fits on every bag of the data set (as published: the test bags included),
    ``train_zscore`` on the training part only, ``none`` keeps the features."""
    if norm == "none":
        return train, val, test
    scaler = FeatureScaler().fit(every if norm == "dataset_zscore" else train)
    return scaler.transform(train), scaler.transform(val), scaler.transform(test)
