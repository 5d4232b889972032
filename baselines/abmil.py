"""ABMIL as the field runs it: CLAM's ``CLAM_SB`` without instance clustering.

Follows mahmoodlab/CLAM ``models/model_clam.py`` (size "small"): Linear(D, 512)-ReLU-Dropout,
gated attention 512-256-1 (its branch dropout is hard-coded to 0.25 whenever dropout is on),
softmax over patches, attention pooling, Linear(512, C). Loss: cross-entropy (``--bag_loss ce``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from baselines.layers import FastDropout, GatedAttention, masked_softmax
from momkd.contract import MILModel, Output, check_bag


@dataclass(frozen=True)
class ABMILConfig:
    embed_dim: int = 512  # CLAM size "small": [D, 512, 256]
    attn_dim: int = 256
    dropout: float = 0.25  # CLAM main.py --drop_out
    gate: bool = True  # CLAM main.py default (gated attention)


class ABMIL(MILModel):
    def __init__(self, in_dim: int, n_classes: int = 2, embed_dim: int = 512, attn_dim: int = 256,
                 dropout: float = 0.25, gate: bool = True):
        super().__init__()
        if not gate:
            raise NotImplementedError("only gated attention (CLAM's default) is implemented")
        fc = [nn.Linear(in_dim, embed_dim), nn.ReLU(), FastDropout(dropout)]
        # CLAM index 3: the gated attention net; its dropout is 0.25 whenever dropout is truthy
        self.attention_net = nn.Sequential(*fc, GatedAttention(embed_dim, attn_dim, 0.25 if dropout else 0.0))
        self.classifiers = nn.Linear(embed_dim, n_classes)

    def forward(self, bag: Any) -> Output:
        check_bag(bag, "abmil")
        h = self.attention_net[:3](bag.features)  # (N, 512)
        a_raw = self.attention_net[3](h).T  # (1, N)
        a = torch.softmax(a_raw, dim=1)
        m = a @ h  # (1, 512)
        logits = self.classifiers(m)  # (1, C)
        return Output(logits, attention=a[0], extras={"attention_raw": a_raw[0], "bag_feature": m})

    def forward_batch(self, features: torch.Tensor, mask: torch.Tensor) -> Output:
        """Padded path for optional multi-slide batches (benchmarks/batching.py): (B, N, D) features and
        a (B, N) patch mask give (B, C) logits; each row equals ``forward`` on that slide alone."""
        h = self.attention_net[:3](features)  # (B, N, E)
        a_raw = self.attention_net[3](h).squeeze(-1)  # (B, N)
        a = masked_softmax(a_raw, mask, dim=1)
        m = torch.bmm(a.unsqueeze(1), h).squeeze(1)  # (B, E)
        return Output(self.classifiers(m), attention=a, extras={"bag_feature": m})


def build(in_dim: int, omics_dim: int | None, n_classes: int, **hp: Any) -> ABMIL:
    return ABMIL(in_dim, n_classes, **hp)


def from_official(state_dict: dict, gate: bool = True, size_arg: str = "small", dropout: float = 0.25,
                  n_classes: int = 2, embed_dim: int | None = None, **_unused: Any) -> ABMIL:
    """Build from a ``CLAM_SB`` state_dict (official key names). ``instance_classifiers.*`` and
    ``instance_loss_fn.*`` are unused on the bag path and dropped; ``.module`` infixes stripped."""
    sd = {k.replace(".module", ""): v for k, v in state_dict.items()
          if not k.startswith(("instance_classifiers", "instance_loss_fn"))}
    in_dim = sd["attention_net.0.weight"].shape[1]
    hidden, attn = {"small": (512, 256), "big": (512, 384)}[size_arg]
    model = ABMIL(in_dim, sd["classifiers.weight"].shape[0], embed_dim=hidden, attn_dim=attn,
                  dropout=dropout, gate=gate)
    model.load_state_dict(sd, strict=True)
    return model
