"""The model contract shared by MoMKD and every baseline (DESIGN.md, "Core objects").

A model is an ``nn.Module`` that reads one slide ("bag") through attribute names only, so it
never imports the data layer:

* ``bag.features``  (N, D) float tensor of patch features
* ``bag.coords``    (N, 2) patch positions or ``None``
* ``bag.edge_index``(2, E) long tensor, directed kNN graph (row i -> its k nearest), or ``None``
* ``bag.omics``     (G,) float tensor or ``None`` (always ``None`` at inference)
* ``bag.label``     int class of the current task, or ``None`` (unlabelled / inference)
* ``bag.slide_id``  str

``forward(bag) -> Output`` uses slide features only whenever ``bag.omics is None``.
``loss(output, bag) -> {"total": scalar, "<term>": scalar, ...}``.
Optional hooks: ``on_fit_start(train_bags)`` (e.g. memory warm start), ``on_step_end()``
(e.g. EMA memory update), ``on_epoch_start(epoch)``. Methods trained in several stages (e.g.
teachers first) list them in ``stages`` and switch with ``set_stage(name)``; the engine trains
each stage in order on the same training split.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class Output:
    """What every model's forward returns for one slide."""

    logits: torch.Tensor  # (1, C)
    attention: torch.Tensor | None = None  # (N,) per-patch weights, when the model has them
    extras: dict[str, Any] = field(default_factory=dict)


def bag_label(bag: Any) -> torch.Tensor:
    """The bag's class as a (1,) long tensor on the features' device (a padded multi-slide batch,
    benchmarks/batching.py, carries its (B,) labels as a tensor already); error if unlabelled."""
    label = getattr(bag, "label", None)
    if label is None:
        raise ValueError(f"slide {getattr(bag, 'slide_id', '?')}: no label for the current task; "
                         "training needs a labelled bag")
    if torch.is_tensor(label):
        return label.reshape(-1).to(device=bag.features.device, dtype=torch.long)
    return torch.as_tensor([int(label)], device=bag.features.device)


class MILModel(nn.Module):
    """Base class: cross-entropy loss and no-op hooks. Subclasses override what they need."""

    #: training stages, run in order by the engine (e.g. ("teachers", "student") for TDC)
    stages: Sequence[str] = ("main",)

    def __init__(self) -> None:
        super().__init__()
        self.stage = self.stages[0]

    def forward(self, bag: Any) -> Output:  # pragma: no cover - abstract
        raise NotImplementedError

    def loss(self, output: Output, bag: Any) -> dict[str, torch.Tensor]:
        ce = F.cross_entropy(output.logits, bag_label(bag))
        return {"total": ce, "ce": ce}

    def probabilities(self, output: Output) -> torch.Tensor:
        """(1, C) class probabilities used for scoring; softmax of the logits unless the official
        method scores otherwise (e.g. DSMIL's per-class sigmoid)."""
        return torch.softmax(output.logits.float(), dim=-1)

    @torch.no_grad()
    def attention_weights(self, bag: Any) -> torch.Tensor | None:
        """(N,) weight of each patch in the slide's prediction, for heatmaps; None when the model
        has no per-patch weights. Default: ``forward(bag).attention``; a model whose weights are
        not part of its forward (TransMIL's cls-token attention) overrides this. (Not named
        ``attention``: several models hold an ``attention`` submodule.)"""
        a = self.forward(bag).attention
        return None if a is None else a.reshape(-1)

    # ---- optional hooks -------------------------------------------------------------------
    def set_stage(self, name: str) -> None:
        if name not in self.stages:
            raise ValueError(f"{type(self).__name__}: unknown stage {name!r}; stages are {list(self.stages)}")
        self.stage = name

    def on_fit_start(self, train_bags: Iterable[Any]) -> None:
        """Called once per stage before the first epoch with the training bags."""

    def on_epoch_start(self, epoch: int) -> None:
        """Called at the start of each training epoch."""

    def on_step_end(self) -> None:
        """Called after each optimizer step."""

    def set_accumulation(self, slides_per_step: int) -> None:
        """Called by the engine before each stage: how many slides each optimizer step accumulates
        (1 unless the recipe accumulates gradients). Losses defined per window of slides use it."""

    def stage_options(self, stage: str) -> dict:
        """Per-stage engine options, e.g. ``{"max_epochs": 20, "early_stopping": False}`` for a
        teacher pre-training stage. Empty: the protocol's defaults."""
        return {}

    def trainable_parameters(self):
        """Parameters the engine's optimizer updates in the current stage (default: all)."""
        return [p for p in self.parameters() if p.requires_grad]


def check_bag(bag: Any, name: str = "model") -> None:
    """Reject bags a model cannot use, with a message naming the slide."""
    feats = getattr(bag, "features", None)
    sid = getattr(bag, "slide_id", "?")
    if feats is None or feats.dim() != 2:
        raise ValueError(f"{name}: slide {sid}: features must be a 2-D (N, D) tensor, got "
                         f"{None if feats is None else tuple(feats.shape)}")
    if feats.shape[0] == 0:
        raise ValueError(f"{name}: slide {sid}: empty bag (0 patches)")
