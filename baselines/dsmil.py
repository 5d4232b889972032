"""DSMIL: dual-stream MIL with a max-instance stream and a critical-instance attention stream.

Li, Li & Eliceiri, "Dual-stream multiple instance learning network for whole slide image
classification with self-supervised contrastive learning", CVPR 2021 (Eqs. 1-4).
Follows binli123/dsmil-wsi ``dsmil.py`` (``MILNet(FCLayer, BClassifier)``, commit 80465ed) and its
training script ``train_tcga.py``:

* instance stream: ``c = Linear(D, C)(h)`` per patch (N, C); max-pooling gives the max-instance
  logits (1, C) (paper Eq. 1);
* bag stream: queries ``q = Linear(D,128)-ReLU-Linear(128,128)-Tanh`` (``nonlinear=True``, as
  ``train_tcga.py --non_linearity 1``); per class the critical instance ``m_c = argmax_i c_ic``;
  ``A = softmax_N(Q q_m^T / sqrt(128))`` (N, C) (Eq. 2); ``B = A^T V`` (C, D) with ``V = h``
  (``passing_v=False``, the training script's setting) (Eq. 3); bag logits from
  ``Conv1d(C, C, kernel=D)`` over B, which MIXES the classes (Eq. 4);
* loss: ``0.5 * BCEWithLogits(bag) + 0.5 * BCEWithLogits(max instance)`` against the script's
  target vector (``train_tcga.py`` ``train()``, ``criterion = nn.BCEWithLogitsLoss()``).

Mapping to C classes (``train_tcga.py`` ``get_bag_feats``): for ``n_classes >= 2`` the target is
the one-hot vector of the label over the C output units (BCE per unit, mean over units, as
``BCEWithLogitsLoss``'s default); for ``n_classes == 1`` (the Camelyon16 setting) the target is the
binary label itself. The official script maps a label ``>= C`` to an all-zero vector; here that
raises an error naming the slide instead.

Reproduced quirks: the attention scale is ``torch.sqrt(torch.tensor(128., dtype=float32))`` even
in float64; the critical instance uses ``argmax`` (the official ``torch.sort(...)[1][0]`` picks the
same row except for exact ties).

Patch dropout (``--dropout_patch``, official default 0): in training the official code keeps a
random ``int(N * (1 - p))`` rows in ``torch.randperm`` order. This depends on instance order and
on RNG state; here it draws from a private ``torch.Generator`` seeded from ``seed`` when given,
otherwise from one draw of torch's global RNG (set by the engine's ``seed_everything``) at
``on_fit_start`` or the first training forward. So a fixed seed gives the same kept rows.
Deviations, both documented: (1) the official ``test()`` also drops patches when p > 0 (a bug);
here evaluation always sees the whole bag; (2) at p = 0 the official code still permutes the rows,
which changes outputs only by rounding (the model is permutation-invariant), so it is skipped;
at least one patch is always kept.

Initialisation (``init``; a documented deviation by default). ``train_tcga.py`` initialises every
Linear/Conv weight orthogonally with zero biases (``"orthogonal"``); the MUSK script
``train_mil.py`` keeps torch's defaults (``"torch"``). Orthogonal rows have norm 1, so the instance
classifier and the Conv1d bag head, both linear in the RAW features (V is the identity), start as a
large random read-out that a short training does not wash out. Measured (shared/investigations
summarised in README "DSMIL"): on the simulated HER2 task the test scores after 8 epochs keep a
Spearman correlation of 0.4-0.5 with the untrained model's, and the pooled AUC moves from 51 to
56-67 with the init seed alone; on MUSK1 (20 folds) starting these two heads at zero adds
+8.2 +- 3.2 accuracy and +7.9 +- 2.5 AUC. The default here is ``"zero_heads"``: the official
orthogonal init for the query network, zeros for the instance classifier and the bag head (both
still learn from the first step: the max-instance and bag losses reach them directly). The
official recipes set their script's init (``--recipe official``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from baselines.layers import FastDropout
from benchmarks.spec import MethodSpec
from momkd.contract import MILModel, Output, check_bag
from momkd.recipe import Recipe

Q_DIM = 128  # dsmil.py BClassifier: hard-coded query width
INITS = ("orthogonal", "torch", "zero_heads")


@dataclass(frozen=True)
class DSMILConfig:
    nonlinear: bool = True  # train_tcga.py --non_linearity 1 (q = Linear-ReLU-Linear-Tanh)
    passing_v: bool = False  # train_tcga.py never sets it: V = Identity
    v_relu: bool = True  # passing_v's V = Dropout-Linear-ReLU (dsmil.py HEAD); False: Dropout-Linear (paper-era dsmil.py)
    dropout_v: float = 0.0  # train_tcga.py --dropout_node 0 (only used when passing_v)
    dropout_patch: float = 0.0  # train_tcga.py --dropout_patch 0 (training-time patch dropout rate)
    bag_loss_weight: float = 0.5  # train_tcga.py train(): loss = 0.5*bag_loss + 0.5*max_loss
    max_loss_weight: float = 0.5  # train_tcga.py train()
    init: str = "zero_heads"  # "orthogonal" (train_tcga.py), "torch" (train_mil.py) or "zero_heads" (ours; docstring)
    seed: int | None = None  # patch-dropout generator; None: one draw of torch's global RNG
    single_logit: bool = False  # one output unit, target = the binary label (train_mil.py, Camelyon16 setting)
    loss_scale_neg_over_pos: bool = False  # train_mil.py: every BCE term scaled by #neg/#pos of the training bags


class FCLayer(nn.Module):
    """Instance classifier on precomputed features (``dsmil.py`` ``FCLayer``): (N, D) -> (N, C)."""

    def __init__(self, in_size: int, out_size: int = 1):
        super().__init__()
        self.fc = nn.Sequential(nn.Linear(in_size, out_size))

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return self.fc(feats)


class BClassifier(nn.Module):
    """Bag stream (``dsmil.py`` ``BClassifier``; key names kept so official weights load)."""

    def __init__(self, input_size: int, output_class: int, dropout_v: float = 0.0,
                 nonlinear: bool = True, passing_v: bool = False, v_relu: bool = True):
        super().__init__()
        if nonlinear:
            self.q = nn.Sequential(nn.Linear(input_size, Q_DIM), nn.ReLU(), nn.Linear(Q_DIM, Q_DIM), nn.Tanh())
        else:
            self.q = nn.Linear(input_size, Q_DIM)
        if passing_v:
            self.v = nn.Sequential(FastDropout(dropout_v), nn.Linear(input_size, input_size),
                                   *([nn.ReLU()] if v_relu else []))
        else:
            self.v = nn.Identity()
        # Conv1d(C, C, kernel=D): logit_o = sum_c sum_d W[o, c, d] B[c, d] + b_o (classes mix)
        self.fcc = nn.Conv1d(output_class, output_class, kernel_size=input_size)

    def forward(self, feats: torch.Tensor, inst_logits: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """feats (N, D), inst_logits (N, C) -> bag logits (1, C), A (N, C), B (1, C, D), critical (C,)."""
        values = self.v(feats)  # (N, D)
        queries = self.q(feats)  # (N, 128)
        critical = inst_logits.detach().argmax(dim=0)  # (C,) critical instance per class (Eq. 2)
        q_max = self.q(feats.index_select(0, critical))  # (C, 128)
        # official: / torch.sqrt(torch.tensor(128., dtype=torch.float32)) -- a float32 constant
        scale = float(np.sqrt(np.float32(queries.shape[1])))  # the same float32 square root, no tensor
        attn = torch.softmax(queries @ q_max.T / scale, dim=0)  # (N, C)
        bag_emb = (attn.T @ values).unsqueeze(0)  # (1, C, D)
        bag_logits = self.fcc(bag_emb).view(1, -1)  # (1, C)
        return bag_logits, attn, bag_emb, critical


class DSMIL(MILModel):
    """``MILNet(FCLayer, BClassifier)`` on one bag, with the official 0.5/0.5 BCE loss.

    ``Output.logits`` = the Conv1d bag logits (1, C) (official ``prediction_bag``);
    ``Output.attention`` (N,) = the attention column of the predicted class (argmax of the bag
    logits; C = 1: the only one). ``extras``: ``instance_logits`` (N, C), ``max_instance_logits``
    (1, C), ``attention_per_class`` (N, C), ``bag_embedding`` (1, C, D), ``critical_index`` (C,),
    ``bag_prob`` = sigmoid(bag) (the official test score), ``avg_prob`` = mean of sigmoid(max) and
    sigmoid(bag) (``--average``), and ``kept_index`` (K,) when patches were dropped in training
    (then the per-patch extras cover the K kept rows, in that order).
    """

    def __init__(self, in_dim: int, n_classes: int = 2, nonlinear: bool = True, passing_v: bool = False,
                 dropout_v: float = 0.0, dropout_patch: float = 0.0, bag_loss_weight: float = 0.5,
                 max_loss_weight: float = 0.5, init: str = "zero_heads", seed: int | None = None,
                 single_logit: bool = False, loss_scale_neg_over_pos: bool = False, v_relu: bool = True):
        super().__init__()
        n_classes = 1 if single_logit else n_classes
        self.loss_scale_neg_over_pos = loss_scale_neg_over_pos
        self.loss_scale = 1.0
        if not 0.0 <= dropout_patch < 1.0:
            raise ValueError(f"dsmil: dropout_patch must be in [0, 1), got {dropout_patch}")
        self.n_classes = n_classes
        self.dropout_patch = dropout_patch
        self.bag_loss_weight = bag_loss_weight
        self.max_loss_weight = max_loss_weight
        self.seed = seed
        self._generator: torch.Generator | None = None
        self.i_classifier = FCLayer(in_dim, n_classes)
        self.b_classifier = BClassifier(in_dim, n_classes, dropout_v, nonlinear, passing_v, v_relu)
        if init not in INITS:
            raise ValueError(f"dsmil: init must be one of {INITS}, got {init!r}")
        if init in ("orthogonal", "zero_heads"):
            self.apply(_sparse_init)
        if init == "zero_heads":  # the two linear read-outs of the raw features start at zero
            for m in (self.i_classifier.fc[0], self.b_classifier.fcc):
                nn.init.zeros_(m.weight)
                nn.init.zeros_(m.bias)

    # ---- randomness -----------------------------------------------------------------------
    def reset_generator(self) -> None:
        """(Re)seed the patch-dropout generator: from ``seed``, else one draw of torch's global RNG."""
        seed = self.seed if self.seed is not None else int(torch.randint(0, 2**62, (1,)).item())
        self._generator = torch.Generator().manual_seed(seed)

    def on_fit_start(self, train_bags: Any) -> None:
        self.reset_generator()
        if self.loss_scale_neg_over_pos:  # train_mil.py compute_pos_weight, passed as BCE's ``weight``
            labels = [int(b.label) for b in train_bags]
            pos = sum(labels)
            if pos == 0:
                raise ValueError("dsmil: loss_scale_neg_over_pos needs a positive training bag")
            self.loss_scale = (len(labels) - pos) / pos

    def kept_patches(self, n_patches: int) -> torch.Tensor:
        """``train_tcga.py`` ``dropout_patches``: the first ``int(N (1 - p))`` of a random
        permutation (at least one), drawn from the seeded generator. (K,) long."""
        if self._generator is None:
            self.reset_generator()
        keep = max(1, int(n_patches * (1.0 - self.dropout_patch)))
        return torch.randperm(n_patches, generator=self._generator)[:keep]

    # ---- forward / loss -------------------------------------------------------------------
    def forward(self, bag: Any) -> Output:
        check_bag(bag, "dsmil")
        feats = bag.features.to(self.i_classifier.fc[0].weight.dtype)  # (N, D)
        n_patches = feats.shape[0]
        kept = None
        if self.training and self.dropout_patch > 0:
            kept = self.kept_patches(n_patches).to(feats.device)  # (K,)
            feats = feats.index_select(0, kept)  # (K, D), in the permuted order
        inst_logits = self.i_classifier(feats)  # (N, C); (K, C) after patch dropout
        bag_logits, attn, bag_emb, critical = self.b_classifier(feats, inst_logits)
        max_logits = inst_logits.max(dim=0, keepdim=True).values  # (1, C)
        bag_prob = torch.sigmoid(bag_logits)
        col = bag_logits.detach().argmax(dim=1)  # (1,) on the device: no host read per step
        extras = {
            "instance_logits": inst_logits, "max_instance_logits": max_logits,
            "attention_per_class": attn, "bag_embedding": bag_emb, "critical_index": critical,
            "bag_prob": bag_prob,  # train_tcga.py test score (--average False)
            "avg_prob": 0.5 * torch.sigmoid(max_logits) + 0.5 * bag_prob,
        }
        attention = attn.index_select(1, col).squeeze(1)
        if kept is not None:  # rows refer to kept patches; dropped patches get attention 0
            extras["kept_index"] = kept
            attention = attention.new_zeros(n_patches).index_copy(0, kept, attention)
        return Output(bag_logits, attention=attention, extras=extras)

    def targets(self, bag: Any, like: torch.Tensor) -> torch.Tensor:
        """The official BCE target (1, C): one-hot over C units, or the binary label when C = 1."""
        label = getattr(bag, "label", None)
        sid = getattr(bag, "slide_id", "?")
        if label is None:
            raise ValueError(f"dsmil: slide {sid}: no label for the current task; training needs a labelled bag")
        label = int(label)
        if self.n_classes == 1:
            if label not in (0, 1):
                raise ValueError(f"dsmil: slide {sid}: label {label} with n_classes=1 must be 0 or 1")
            return torch.full((1, 1), float(label), dtype=like.dtype, device=like.device)
        if not 0 <= label < self.n_classes:
            raise ValueError(f"dsmil: slide {sid}: label {label} outside 0..{self.n_classes - 1}")
        return F.one_hot(torch.tensor([label], device=like.device), self.n_classes).to(like.dtype)

    def probabilities(self, output: Output) -> torch.Tensor:
        """Per-class sigmoid of the bag logits: the official ``train_tcga.py`` test score."""
        return output.extras["bag_prob"].float().reshape(1, -1)

    def loss(self, output: Output, bag: Any) -> dict[str, torch.Tensor]:
        """``train_tcga.py``: 0.5 * BCEWithLogits(bag logits) + 0.5 * BCEWithLogits(max instance)."""
        target = self.targets(bag, output.logits)
        bag_loss = F.binary_cross_entropy_with_logits(output.logits, target)
        max_loss = F.binary_cross_entropy_with_logits(output.extras["max_instance_logits"], target)
        total = self.loss_scale * (self.bag_loss_weight * bag_loss + self.max_loss_weight * max_loss)
        return {"total": total, "bag_bce": bag_loss, "max_bce": max_loss}


def _sparse_init(m: nn.Module) -> None:
    """``train_tcga.py`` ``apply_sparse_init``: orthogonal weights, zero biases."""
    if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d)):
        nn.init.orthogonal_(m.weight)
        if m.bias is not None:
            nn.init.zeros_(m.bias)


def build(in_dim: int, omics_dim: int | None, n_classes: int, **hp: Any) -> DSMIL:
    return DSMIL(in_dim, n_classes, **hp)


DSMIL_REPO = "binli123/dsmil-wsi@80465ed"

# train_tcga.py, the WSI script (README.md:L60-64).
RECIPE = Recipe(
    name="official", optimizer="adam", betas=(0.5, 0.9), lr=1e-4, weight_decay=1e-3, epochs=50,
    scheduler="cosine", eta_min=5e-6, grad_clip=None, monitor="val_auc_acc", patience=11, min_epochs=0,
    balanced_sampling=False, hparams={"init": "orthogonal"},
    sources={
        "optimizer": f"{DSMIL_REPO} train_tcga.py:L241 (Adam, betas (0.5, 0.9))",
        "lr": f"{DSMIL_REPO} train_tcga.py:L203 (1e-4)",
        "weight_decay": f"{DSMIL_REPO} train_tcga.py:L207 (1e-3)",
        "epochs": f"{DSMIL_REPO} train_tcga.py:L204 (--num_epochs 50)",
        "scheduler": f"{DSMIL_REPO} train_tcga.py:L242 (CosineAnnealingLR(T_max=num_epochs, eta_min=5e-6)), "
                     "stepped per epoch L278",
        "monitor": f"{DSMIL_REPO} train_tcga.py:L179-181 ((AUC + accuracy) / 2 on the held-out fold)",
        "patience": f"{DSMIL_REPO} train_tcga.py:L205, L270-287 (breaks when counter > stop_epochs=10)",
        "balanced_sampling": f"{DSMIL_REPO} train_tcga.py:L57 (bag order shuffled each epoch, no sampler)",
        "loss": f"{DSMIL_REPO} train_tcga.py:L68-71 (0.5 BCE(bag) + 0.5 BCE(max instance)), L240",
        "init": f"{DSMIL_REPO} train_tcga.py:L229-233, L239 (orthogonal weights, zero biases)",
        "dropout_patch": f"{DSMIL_REPO} train_tcga.py:L211 (--dropout_patch 0)",
    },
    notes="train_tcga.py selects its checkpoint and threshold on the held-out fold it reports (5-fold-cv scheme, "
          "L262-288); here both use the validation part. Its score sums the per-class AUCs; for two classes the "
          "monitor is (AUC + accuracy) / 2 of the positive class. No seed is set officially.")

# train_mil.py, the MUSK / Elephant / Fox / Tiger benchmark script (README.md:L50-56).
CLASSIC_MIL_RECIPE = Recipe(
    name="official", optimizer="adam", betas=(0.5, 0.9), lr=2e-4, weight_decay=5e-3, epochs=40,
    scheduler="cosine", eta_min=0.0, grad_clip=None, monitor="none", patience=None, balanced_sampling=False,
    hparams={"single_logit": True, "init": "torch", "loss_scale_neg_over_pos": True,
             "nonlinear": False, "passing_v": True, "v_relu": False},
    sources={
        "optimizer": f"{DSMIL_REPO} train_mil.py:L174 (Adam, betas (0.5, 0.9))",
        "lr": f"{DSMIL_REPO} train_mil.py:L115 (2e-4)",
        "weight_decay": f"{DSMIL_REPO} train_mil.py:L118 (5e-3)",
        "epochs": f"{DSMIL_REPO} train_mil.py:L116 (40)",
        "scheduler": f"{DSMIL_REPO} train_mil.py:L175 (CosineAnnealingLR(T_max=40, eta_min=0)), stepped L184",
        "monitor": f"{DSMIL_REPO} train_mil.py:L99-104, L166-168 (no validation split, no early stopping)",
        "single_logit": f"{DSMIL_REPO} train_mil.py:L169-171 (FCLayer(num_feats, 1), BClassifier(output_class=1))",
        "init": f"{DSMIL_REPO} train_mil.py (no init call: torch defaults)",
        "loss_scale_neg_over_pos": f"{DSMIL_REPO} train_mil.py:L106-110, L172-173 (BCEWithLogitsLoss(pos_weight) "
                                   "passes #neg/#pos positionally, as the uniform weight)",
        "loss": f"{DSMIL_REPO} train_mil.py:L52-54 (0.5 bag + 0.5 max-instance BCE)",
        "nonlinear": "binli123/dsmil-wsi@fa97494 dsmil.py:L29-35, the model of the paper's benchmark table "
                     "(q = Linear(K, 128), v = Dropout(0) + Linear(K, K); research/literature_protocols.md 2c, "
                     "'Model drift'); HEAD (dsmil.py:L28-41: non-linear q, identity v) is `nonlinear=True, "
                     "passing_v=False`: on the same first-repeat folds, as published, the paper-era model gave "
                     "MUSK1 97.8 / MUSK2 95.0 / Elephant 94.5 against HEAD's 93.3 / 87.0 / 92.5",
        "passing_v": "binli123/dsmil-wsi@fa97494 dsmil.py:L29-35 (v = Dropout(0) + Linear(K, K), no ReLU: v_relu=False)",
    },
    notes="The script's reported number (max test accuracy over epochs, threshold on the test fold's ROC) is a "
          "protocol choice, reproduced by `reproduce --protocol as-published` only. Instances are shuffled in "
          "each step (L46): the model is permutation-invariant, so that is skipped.")


def from_official(state_dict: dict, input_size: int | None = None, output_class: int | None = None,
                  dropout_v: float = 0.0, nonlinear: bool = True, passing_v: bool = False,
                  **_unused: Any) -> DSMIL:
    """Build from a ``MILNet(FCLayer, BClassifier)`` state_dict; ``official_config`` holds the
    ``BClassifier`` kwargs (``FCLayer`` gets ``in_size=input_size, out_size=output_class``)."""
    sd = {k.replace("module.", "", 1) if k.startswith("module.") else k: v for k, v in state_dict.items()}
    w = sd["i_classifier.fc.0.weight"]  # (C, D)
    in_dim = input_size if input_size is not None else w.shape[1]
    n_classes = output_class if output_class is not None else w.shape[0]
    if tuple(w.shape) != (n_classes, in_dim):
        raise ValueError(f"dsmil.from_official: i_classifier.fc.0.weight has shape {tuple(w.shape)}, "
                         f"config says (output_class={n_classes}, input_size={in_dim})")
    model = DSMIL(in_dim, n_classes, nonlinear=bool(nonlinear), passing_v=bool(passing_v),
                  dropout_v=dropout_v, init="torch")
    model.load_state_dict(sd, strict=True)
    return model


SPEC = MethodSpec(
    "dsmil", family="mil", display="DSMIL", job_cost=1.0, build=build, config=DSMILConfig,
    recipes={"wsi": RECIPE, "classic_mil": CLASSIC_MIL_RECIPE},
    search_space=("lr=1e-5:1e-3:log", "weight_decay=1e-6:1e-2:log", "dropout_patch=0.0:0.5", "passing_v=false,true"),
    paper="Li, Li & Eliceiri, CVPR 2021",
    code="binli123/dsmil-wsi dsmil.py MILNet(FCLayer, BClassifier), train_tcga.py",
    description="dual-stream MIL: max-instance + critical-instance attention (Conv1d bag head)")
