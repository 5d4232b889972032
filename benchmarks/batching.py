"""Optional multi-slide batching: several bags per optimizer step, padded to the longest bag with a
patch mask (issue #9). Off by default (``ProtocolConfig.batch_size = 1``): every official protocol
trains one slide per step. Only models whose maths allows padding implement ``forward_batch(x,
mask)`` (attention pooling with ``baselines.layers.masked_softmax``, e.g. ABMIL); the others train one slide per step
whatever the setting, and the job result records the batch size actually used.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch


@dataclass
class PaddedBatch:
    """``features`` (B, N_max, D) zero-padded, ``mask`` (B, N_max) True on real patches,
    ``label`` (B,) long, ``slide_ids`` for error messages."""

    features: torch.Tensor
    mask: torch.Tensor
    label: torch.Tensor
    slide_ids: list[str]

    @property
    def slide_id(self) -> str:  # engine messages name the slides of a failing step
        return ",".join(self.slide_ids)


def supports_batching(model: Any) -> bool:
    return callable(getattr(model, "forward_batch", None))


def pad_bags(bags: Sequence[Any]) -> PaddedBatch:
    """Stack bags of different sizes; padded rows are zeros and masked out."""
    if not bags:
        raise ValueError("pad_bags: no bags")
    n_max = max(int(b.features.shape[0]) for b in bags)
    d = int(bags[0].features.shape[1])
    ref = bags[0].features
    x = ref.new_zeros((len(bags), n_max, d))
    mask = torch.zeros(len(bags), n_max, dtype=torch.bool, device=ref.device)
    for i, b in enumerate(bags):
        if b.features.shape[1] != d:
            raise ValueError(f"slide {b.slide_id}: feature dim {b.features.shape[1]} != {d} of slide "
                             f"{bags[0].slide_id} in the same batch")
        n = b.features.shape[0]
        x[i, :n] = b.features
        mask[i, :n] = True
    y = torch.as_tensor([int(b.label) for b in bags], device=ref.device)
    return PaddedBatch(x, mask, y, [str(b.slide_id) for b in bags])
