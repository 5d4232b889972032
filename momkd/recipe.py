"""A training recipe as data: how a method is optimised, scheduled, stopped and selected.

Every method carries its official recipe (the settings of its own training script, each field
citing the file and line it comes from, see ``sources``) next to the benchmark's shared recipe
(one optimiser and schedule for every method, built from the suite's protocol). The engine
(``benchmarks/engine.py``) trains from a ``Recipe`` only, so ``--recipe shared|official`` changes
nothing else. Loss weights, extra losses, dropout and patch dropout are model hyper-parameters:
a recipe sets them through ``hparams``.

Fields that an official script fills from data the benchmark's protocol forbids (the test fold for
early stopping or checkpoint choice, omics of validation slides) are replaced by the nearest
leak-free equivalent; ``notes`` says which and why.

This module imports nothing (a method package can declare its recipe without the benchmark).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping

from benchmarks.hashing import stable_hash

OPTIMIZERS = ("adam", "adamw", "sgd", "radam", "lookahead_radam")
SCHEDULERS = ("none", "cosine", "step", "multistep", "plateau")
# val_auc: validation AUC (ties: lower validation log-loss); val_loss: validation log-loss of the
# scored probability (the cross-entropy for softmax heads); val_auc_acc: (AUC + accuracy at 0.5) / 2
# (DSMIL train_tcga.py); none: no validation part is read, the last epoch is kept.
MONITORS = ("val_auc", "val_loss", "val_auc_acc", "none")
DECAY_MASKS = ("all", "matrices")
PARTIAL = ("step", "discard", "carry")


@dataclass(frozen=True)
class Recipe:
    """Training settings of one method (see the module docstring).

    ``patience=None`` trains every epoch (no early stopping) and still keeps the best monitored
    epoch unless ``monitor="none"`` (then the last). ``min_epochs``: no early stop before this many
    epochs (CLAM's ``stop_epoch``). ``select_after``: a fraction f of the epochs; when f > 0 only
    epochs with index > int(f * epochs) are selected (DTFD-MIL: 0.8, ``ii > int(EPOCH * 0.8)``). ``grad_accumulation``: the loss of each slide is
    divided by it and the optimiser steps every that many slides (and at the epoch end).
    ``clip_per_group``: clip each of the model's ``grad_clip_groups()`` separately (DTFD-MIL).
    ``per_suite``: field overrides for named data sets (e.g. Ilse et al.'s per-data-set lr).
    """

    name: str = "shared"
    optimizer: str = "adamw"
    lr: float = 2e-4
    betas: tuple[float, float] = (0.9, 0.999)
    momentum: float = 0.0  # sgd only
    nesterov: bool = False  # sgd only
    weight_decay: float = 1e-4
    decay_mask: str = "all"  # "matrices": no decay on biases and 1-D parameters (TransMIL add_weight_decay)
    lookahead_alpha: float = 0.5  # lookahead_radam only
    lookahead_k: int = 6
    epochs: int = 20
    scheduler: str = "cosine"  # stepped once per epoch
    eta_min: float = 0.0  # cosine floor
    t_max: int = 0  # cosine period in epochs (0: the recipe's epochs; MKD: 50 of 100, the lr rises again)
    step_size: int = 30  # step
    milestones: tuple[int, ...] = ()  # multistep
    gamma: float = 0.1  # step / multistep
    plateau_factor: float = 0.1  # plateau: on the monitored validation score
    plateau_patience: int = 10
    warmup_epochs: int = 0  # linear warm-up of the lr over the first epochs
    grad_accumulation: int = 1
    accumulate_scaled: bool = True  # divide each slide's loss by grad_accumulation (False: the model's loss does)
    partial_accumulation: str = "step"  # slides left at the epoch end: "step" | "discard" | "carry" (to next epoch)
    grad_clip: float | None = None  # max global gradient norm; None: no clipping
    clip_per_group: bool = False
    monitor: str = "val_auc"
    patience: int | None = None
    min_epochs: int = 0
    select_after: float = 0.0
    balanced_sampling: bool = False  # class-balanced sampling with replacement (CLAM --weighted_sample)
    hparams: Mapping[str, Any] = field(default_factory=dict)
    per_suite: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    sources: Mapping[str, str] = field(default_factory=dict)
    notes: str = ""

    def __post_init__(self) -> None:
        bad = []
        if self.optimizer not in OPTIMIZERS:
            bad.append(f"optimizer {self.optimizer!r} not in {OPTIMIZERS}")
        if self.scheduler not in SCHEDULERS:
            bad.append(f"scheduler {self.scheduler!r} not in {SCHEDULERS}")
        if self.monitor not in MONITORS:
            bad.append(f"monitor {self.monitor!r} not in {MONITORS}")
        if self.decay_mask not in DECAY_MASKS:
            bad.append(f"decay_mask {self.decay_mask!r} not in {DECAY_MASKS}")
        if not self.lr > 0:
            bad.append(f"lr must be > 0, got {self.lr}")
        if self.epochs < 1:
            bad.append(f"epochs must be >= 1, got {self.epochs}")
        if self.partial_accumulation not in PARTIAL:
            bad.append(f"partial_accumulation {self.partial_accumulation!r} not in {PARTIAL}")
        if not 0.0 <= self.select_after < 1.0:
            bad.append(f"select_after is a fraction of the epochs in [0, 1), got {self.select_after}")
        if self.grad_accumulation < 1:
            bad.append(f"grad_accumulation must be >= 1, got {self.grad_accumulation}")
        if self.patience is not None and self.patience < 1:
            bad.append(f"patience must be >= 1 or None, got {self.patience}")
        if self.monitor == "none" and self.patience is not None:
            bad.append("monitor 'none' reads no validation part, so it cannot early-stop (patience must be None)")
        unknown = {k for o in self.per_suite.values() for k in o} - {f.name for f in dataclasses.fields(self)}
        if unknown:
            bad.append(f"per_suite sets unknown fields {sorted(unknown)}")
        if bad:
            raise ValueError(f"recipe {self.name!r}: " + "; ".join(bad))
        # tuples, also when built from JSON lists
        object.__setattr__(self, "betas", tuple(float(b) for b in self.betas))
        object.__setattr__(self, "milestones", tuple(int(m) for m in self.milestones))

    # -- derived recipes ---------------------------------------------------------------------
    def replace(self, **changes: Any) -> "Recipe":
        return dataclasses.replace(self, **changes)

    def for_suite(self, suite: str | None) -> "Recipe":
        """The recipe with its overrides for data set ``suite`` applied (``per_suite``)."""
        over = dict(self.per_suite.get(suite or "", {}))
        return dataclasses.replace(self, **over) if over else self

    @property
    def uses_validation(self) -> bool:
        """Whether training reads a validation part (monitoring, early stopping, plateau schedule)."""
        return self.monitor != "none"

    # -- serialisation -----------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["betas"], d["milestones"] = list(self.betas), list(self.milestones)
        d["hparams"] = dict(self.hparams)
        d["per_suite"] = {k: dict(v) for k, v in self.per_suite.items()}
        d["sources"] = dict(self.sources)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Recipe":
        known = {f.name for f in dataclasses.fields(cls)}
        bad = set(d) - known
        if bad:
            raise KeyError(f"unknown recipe fields {sorted(bad)}; valid: {sorted(known)}")
        return cls(**dict(d))

    def training_dict(self) -> dict[str, Any]:
        """What changes a trained model (no citations or notes): the part a job's hash covers."""
        d = self.to_dict()
        for k in ("sources", "notes", "per_suite"):
            d.pop(k)
        return d

    def hash(self) -> str:
        return stable_hash(self.training_dict(), 12)

    def summary(self) -> str:
        """One line for captions and logs, e.g. ``official: adam lr 2e-4 wd 1e-5, 200 ep, val_loss p20``."""
        opt = self.optimizer + (f" betas {self.betas[0]:g},{self.betas[1]:g}" if self.betas != (0.9, 0.999)
                                and self.optimizer != "sgd" else "")
        opt += f" m {self.momentum:g}" if self.optimizer == "sgd" else ""
        sched = "" if self.scheduler == "none" else f", {self.scheduler}"
        stop = (f", {self.monitor}" + (f" patience {self.patience}" if self.patience else "")
                if self.monitor != "none" else ", last epoch")
        acc = f", accumulate {self.grad_accumulation}" if self.grad_accumulation > 1 else ""
        return (f"{self.name}: {opt} lr {self.lr:g} wd {self.weight_decay:g}, {self.epochs} epochs{sched}"
                f"{acc}{stop}")
