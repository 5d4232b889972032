"""ABMIL as the field runs it: CLAM's ``CLAM_SB`` without instance clustering.

Follows mahmoodlab/CLAM ``models/model_clam.py`` (size "small"): Linear(D, 512)-ReLU-Dropout,
gated attention 512-256-1 (its branch dropout is hard-coded to 0.25 whenever dropout is on),
softmax over patches, attention pooling, Linear(512, C). Loss: cross-entropy (``--bag_loss ce``).

The network of Ilse et al.'s classic MIL benchmarks (MUSK, Elephant; ICML 2018, built on
Wang et al.'s mi-Net embedding) is the same model with more embedding layers and plain (not gated)
attention: ``embed_dim=256, hidden_dims=(128, 64), attn_dim=64, gate=False`` and Glorot
initialisation (``init="xavier"``); its recipe is ``CLASSIC_MIL_RECIPE`` below. Ilse et al. use one
sigmoid output and a Bernoulli likelihood; two softmax logits with cross-entropy are the same model
class (the softmax of two logits is the sigmoid of their difference).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from baselines.layers import Attention, FastDropout, GatedAttention, masked_softmax
from benchmarks.spec import MethodSpec
from momkd.contract import MILModel, Output, check_bag
from momkd.recipe import Recipe

CLAM = "mahmoodlab/CLAM@53e2409"


@dataclass(frozen=True)
class ABMILConfig:
    embed_dim: int = 512  # CLAM size "small": [D, 512, 256]
    attn_dim: int = 256
    dropout: float = 0.25  # CLAM main.py --drop_out
    gate: bool = True  # CLAM main.py default (gated attention); False: Ilse et al.'s plain tanh attention
    hidden_dims: tuple[int, ...] = ()  # more embedding layers (Ilse's classic-MIL net: 256-128-64)
    attn_dropout: float | None = None  # None: CLAM's rule (0.25 in the gated branches whenever dropout > 0)
    init: str = "torch"  # "torch" (current CLAM) | "xavier" (Glorot-uniform weights, zero biases: Ilse et al.)


class ABMIL(MILModel):
    def __init__(self, in_dim: int, n_classes: int = 2, embed_dim: int = 512, attn_dim: int = 256,
                 dropout: float = 0.25, gate: bool = True, hidden_dims: tuple[int, ...] = (),
                 attn_dropout: float | None = None, init: str = "torch"):
        super().__init__()
        if init not in ("torch", "xavier"):
            raise ValueError(f"abmil: init must be 'torch' or 'xavier', got {init!r}")
        widths = [embed_dim, *hidden_dims]
        fc: list[nn.Module] = []
        for d_in, d_out in zip([in_dim, *widths[:-1]], widths):  # CLAM: one Linear-ReLU-Dropout
            fc += [nn.Linear(d_in, d_out), nn.ReLU(), FastDropout(dropout)]
        p_attn = (0.25 if dropout else 0.0) if attn_dropout is None else attn_dropout
        # CLAM index 3 (one embedding layer): the gated attention net
        attn = GatedAttention(widths[-1], attn_dim, p_attn) if gate else Attention(widths[-1], attn_dim, p_attn)
        self.attention_net = nn.Sequential(*fc, attn)
        self.classifiers = nn.Linear(widths[-1], n_classes)
        if init == "xavier":
            for m in self.modules():
                if isinstance(m, nn.Linear):
                    nn.init.xavier_uniform_(m.weight)
                    nn.init.zeros_(m.bias)

    def forward(self, bag: Any) -> Output:
        check_bag(bag, "abmil")
        h = self.attention_net[:-1](bag.features)  # (N, 512)
        a_raw = self.attention_net[-1](h).T  # (1, N)
        a = torch.softmax(a_raw, dim=1)
        m = a @ h  # (1, 512)
        logits = self.classifiers(m)  # (1, C)
        return Output(logits, attention=a[0], extras={"attention_raw": a_raw[0], "bag_feature": m})

    def forward_batch(self, features: torch.Tensor, mask: torch.Tensor) -> Output:
        """Padded path for optional multi-slide batches (benchmarks/batching.py): (B, N, D) features and
        a (B, N) patch mask give (B, C) logits; each row equals ``forward`` on that slide alone."""
        h = self.attention_net[:-1](features)  # (B, N, E)
        a_raw = self.attention_net[-1](h).squeeze(-1)  # (B, N)
        a = masked_softmax(a_raw, mask, dim=1)
        m = torch.bmm(a.unsqueeze(1), h).squeeze(1)  # (B, E)
        return Output(self.classifiers(m), attention=a, extras={"bag_feature": m})


def build(in_dim: int, omics_dim: int | None, n_classes: int, **hp: Any) -> ABMIL:
    hp["hidden_dims"] = tuple(hp.get("hidden_dims", ()))  # a list after a JSON round trip
    return ABMIL(in_dim, n_classes, **hp)


# CLAM's README training command (docs/README.md:L248): --drop_out 0.25 --early_stopping --lr 2e-4
# --weighted_sample --bag_loss ce (ABMIL = clam_sb with --no_inst_cluster, main.py:L103).
RECIPE = Recipe(
    name="official", optimizer="adam", lr=2e-4, weight_decay=1e-5, epochs=200, scheduler="none",
    grad_clip=None, monitor="val_loss", patience=20, min_epochs=52, balanced_sampling=True,
    sources={
        "optimizer": f"{CLAM} utils/utils.py:L74 (Adam, default betas; --opt adam main.py:L92)",
        "lr": f"{CLAM} docs/README.md:L248 (--lr 2e-4; main.py:L74 default 1e-4)",
        "weight_decay": f"{CLAM} main.py:L78 (--reg 1e-5), utils/utils.py:L74",
        "epochs": f"{CLAM} main.py:L72 (--max_epochs 200)",
        "scheduler": f"{CLAM} utils/core_utils.py (no scheduler)",
        "grad_clip": f"{CLAM} utils/core_utils.py:L264-267 (no clipping)",
        "monitor": f"{CLAM} utils/core_utils.py:L49-90, L415-417 (EarlyStopping on the bag CE of the validation split)",
        "patience": f"{CLAM} utils/core_utils.py:L178 (EarlyStopping(patience=20, stop_epoch=50))",
        "min_epochs": f"{CLAM} utils/core_utils.py:L78 (stops only when epoch > stop_epoch=50: 52 epochs at least)",
        "balanced_sampling": f"{CLAM} docs/README.md:L248 (--weighted_sample), utils/utils.py:L58-60, L147-155",
        "dropout": f"{CLAM} main.py:L93 (--drop_out 0.25), models/model_clam.py:L50-52, L83",
        "loss": f"{CLAM} utils/core_utils.py:L123 (CrossEntropyLoss), L305 (train_loop, --no_inst_cluster)",
        "checkpoint": f"{CLAM} utils/core_utils.py:L198-199 (the lowest-validation-loss checkpoint is reloaded)",
        "seed": f"{CLAM} main.py:L80 (--seed 1; here the suite's seeds)",
    },
    notes="CLAM stops when the validation loss has not improved for 20 epochs after epoch 50 and reloads the "
          "best-validation-loss checkpoint; the validation part is the protocol's (never the test fold).")

# Ilse, Tomczak & Welling (ICML 2018) classic MIL benchmarks. The authors' repository holds only the
# MNIST-bags experiment (AttentionDeepMIL README.md:L24-27: no validation set, no early stopping); the
# benchmark settings below are third-party transcriptions of the paper's supplement (shared/research/
# literature_protocols.md 2a): SGD momentum 0.9, Glorot init, per-data-set lr / weight decay, 40 epochs,
# the mi-Net embedding 256-128-64 with ReLU and dropout, attention with 64 hidden units, last epoch kept.
CLASSIC_MIL_RECIPE = Recipe(
    name="official", optimizer="sgd", momentum=0.9, lr=5e-4, weight_decay=5e-3, epochs=40, scheduler="none",
    grad_clip=None, monitor="none", patience=None, balanced_sampling=False,
    hparams={"embed_dim": 256, "hidden_dims": (128, 64), "attn_dim": 64, "gate": False, "dropout": 0.5,
             "attn_dropout": 0.0, "init": "xavier"},
    per_suite={"musk1": {"lr": 5e-4, "weight_decay": 5e-3}, "musk2": {"lr": 5e-4, "weight_decay": 3e-2},
               "elephant": {"lr": 1e-4, "weight_decay": 5e-3}},
    sources={
        "optimizer": "Ilse et al. 2018 supplement, as transcribed by a third party (literature_protocols.md 2a "
                     "[3P]): SGD, momentum 0.9, no scheduler",
        "lr": "[3P] per data set: MUSK1 5e-4, MUSK2 5e-4, Elephant 1e-4 (UCSB: none published; MUSK1's)",
        "weight_decay": "[3P] per data set: MUSK1 5e-3, MUSK2 3e-2, Elephant 5e-3",
        "epochs": "[3P] 40 (a re-implementation citing the supplement; unverified)",
        "monitor": "AttentionDeepMIL@eb0434b README.md:L24-27 (no validation set, no early stopping): last epoch",
        "loss": "AttentionDeepMIL@eb0434b model.py calculate_objective (Bernoulli NLL of the sigmoid output; here "
                "cross-entropy of two logits, the same model class)",
        "hparams": "[R] Ilse 2018 Sec. 5.1 / mi-Net (Wang et al. 2018, MI_Net.py:L128-173): fc 256-128-64 ReLU, "
                   "dropout, attention L=64; Glorot init [3P]",
    },
    notes="Unverified details (not in any official code): the epoch budget, the dropout rate (mi-Net's 0.5) and "
          "whether dropout follows every embedding layer. Selection: the last epoch, as mi-Net's benchmark code.")


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


SPEC = MethodSpec(
    "abmil", family="mil", display="ABMIL", job_cost=1.5, build=build, config=ABMILConfig,
    recipes={"wsi": RECIPE, "classic_mil": CLASSIC_MIL_RECIPE},
    search_space=("lr=1e-5:1e-3:log", "weight_decay=1e-6:1e-2:log", "dropout=0.0:0.5", "attn_dim=64,128,256,384"),
    scale_params={"small": {"embed_dim": 128, "attn_dim": 64}},
    paper="Ilse et al., ICML 2018 (CLAM-style gated attention, Lu et al. 2021)",
    code="mahmoodlab/CLAM models/model_clam.py CLAM_SB without instance clustering",
    description="gated-attention MIL (CLAM_SB, no instance clustering)")
