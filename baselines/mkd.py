"""MKD: multi-modal knowledge decomposition based online distillation (Zhang et al., MICCAI 2025).

Paper: Q. Zhang, X. Hao, Q. Chen, R. Xu, F. Cong, C. Lu, H. Xu, "Multi-modal Knowledge
Decomposition based Online Distillation for Biomarker Prediction in Breast Cancer
Histopathology", MICCAI 2025, arXiv 2508.17213. The repository the abstract names
(qiyuanzz/MICCAI2025_MKD) is not in the store; this follows zqb77/MICCAI25 @ 545555a (same title,
same author's paths): ``models/online_kd.py`` (student ``ABMIL``, multimodal teacher
``ABMIL_SNN``), ``models/snnmil.py`` (omics teacher ``SNNMIL``), ``trainer/online_kd_trainer.py``
(losses), ``utils/core_utils_train.py`` and ``train_kd.py`` (defaults), ``utils/MMD_loss.py``
(CORAL), ``utils/loss/KD.py`` (``DistillKL``); the journal version qiyuanzz/GMKDN has the same
networks.

Networks (trained jointly, online, from scratch):

* student S (slides only, the scored model): h = ReLU(Linear(D, 256) x); gated attention
  256-128-1 (no dropout); f_s = softmax(a)^T h; logits = Linear(256, C)(Dropout 0.25 f_s);
  ``init_max_weights``.
* multimodal teacher T_mm (``ABMIL_SNN``, ``--fusion bilinear``): path h_p = Dropout(ReLU(Linear(D,
  256) x)) pooled by gated attention; omics tokens h_g = SNN(Linear(token, 256)) pooled by a
  second gated attention; f_mm = BilinearFusion(256, 256, scale 8, 8, mmhid 256)(p, o); logits =
  Linear(256, C)(f_mm).
* omics teacher T_g (``SNNMIL``): SNN block on the tokens, gated attention, f_g pooled,
  logits = Linear(256, C)(Dropout f_g); ``init_max_weights``.

Losses (``online_kd_trainer.py``). Per slide ``(CE(S) + CE(T_mm) + CE(T_g)) / gc``. Every ``gc``
= 16 slides, on the stacked window features F (B x 256) and logits Z (B x C), B = gc:

* similarity-preserving L_SP = B * [SP(F_s, F_mm) + SP(F_s, F_g)] (no detach: mutual),
* mutual KL at T = 4: KL(Z_s || sg Z_mm) + KL(Z_mm || sg Z_s) + KL(Z_s || sg Z_g) + KL(Z_g || sg Z_s),
* orthogonality (|mean <f_mm, f_s>| + |mean <f_g, f_s>| + |mean <f_g, f_mm>|) / 6,
* CORAL(F_mm, F_s) + CORAL(F_g, F_s) + CORAL(F_g, F_mm),

all with weight 1 (``--intermediate_loss_fn SP --logits_loss_fn KL --OR OR``).

Adaptations (documented choices)
--------------------------------
* Window and gradients. The official loop back-propagates each slide's CE/gc with
  ``retain_graph=True``, computes the window terms on the 16 stacked slides, back-propagates them
  through all 16 graphs and steps once (gradient accumulation). Our engine steps after every
  slide, so the graphs of earlier slides are stale once the weights change in place. With
  ``window_grad="recompute"`` (default) the window keeps the last 15 bags and, on the 16th slide,
  re-runs the three networks on them with the current weights, so the window terms reach every
  slide of the window as in the official code (dropout masks are redrawn; cost: one extra forward
  and backward of 15 slides per window). Without a step inside the window this is exactly the
  official window loss and gradient (checked in ``tests/test_kd_models.py``).
  ``window_grad="current"`` caches detached outputs and lets the window terms reach the 16th
  slide only (cheaper, weaker). CE is divided by the slides the engine accumulates per step
  (``ce_over_window="auto"``, :class:`baselines.kd_losses.WindowCE`): by 16 under the official recipe (16-slide
  accumulation: the official update exactly), not at all under the shared recipe's one step per
  slide (dividing there made every CE step 16x smaller than the window steps, and the student's CE
  hardly fell: measured on the simulated HER2 folds, test AUC 56.3 -> 59.8). Windows restart every
  epoch; the official loop drops the CE gradients of the last N mod 16 slides of an epoch (the
  official recipe does the same, ``partial_accumulation="discard"``).
* Omics tokens: the official input is 8192 Cox-selected genes reshaped to 16 x 512. Here the
  fold's z-scored omics vector of any length G becomes 16 tokens of ceil(G / 16) genes
  (zero-padded), so the SNN input width is ceil(G / 16).
* Early stopping: the official monitor is the mean validation AUC of the student and both
  teachers, which needs validation omics. Our validation bags carry no omics, so the engine
  monitors the student (the scored model) alone.
* Optimiser and schedule: the official AdamW(lr 2e-4, wd 1e-5), cosine T_max 50, 100 epochs,
  EarlyStopping(patience 5, stop_epoch 5) are recorded in the registry; the shared protocol
  applies its own (same for every method).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from baselines.kd_losses import KDWindow, WindowCE, coral, distill_kl, mkd_orthogonality, similarity_preserving
from baselines.layers import FastDropout, GatedAttention
from baselines.omics_utils import BilinearFusion, GeneTokenizer, init_max_weights, snn_block
from benchmarks.spec import MethodSpec
from momkd.contract import MILModel, Output, bag_label, check_bag
from momkd.recipe import Recipe

WINDOW_GRAD_MODES = ("recompute", "current")


# ------------------------------------------------------------------------------------------
# networks shared with TDC (the MKD code base ships both)
# ------------------------------------------------------------------------------------------
class ABMILNet(nn.Module):
    """MKD ``ABMIL`` (``online_kd.py``): Linear(D, 256)-ReLU, gated attention 256-128-1, pooled
    feature, Dropout + Linear(256, C) (``Classifier_1fc``); ``init_max_weights``."""

    def __init__(self, in_dim: int, n_classes: int, hidden: int = 256, attn_dim: int = 128, dropout: float = 0.25):
        super().__init__()
        self.fc = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU())
        self.attention = GatedAttention(hidden, attn_dim, 0.0)
        self.classifier = nn.Sequential(FastDropout(dropout), nn.Linear(hidden, n_classes))
        init_max_weights(self)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        h = self.fc(x)  # (N, 256)
        a = torch.softmax(self.attention(h).T, dim=1)  # (1, N)
        f = a @ h  # (1, 256)
        return self.classifier(f), f, a[0]


class SNNMILNet(nn.Module):
    """MKD omics teacher ``SNNMIL`` (``snnmil.py``): SNN block on the gene tokens, gated attention
    over tokens, pooled feature, Dropout + Linear(256, C); ``init_max_weights``. (The official
    class also builds an unused ``classifier``; it is left out.)"""

    def __init__(self, token_dim: int, n_classes: int, hidden: int = 256, attn_dim: int = 128, dropout: float = 0.25):
        super().__init__()
        self.fc1 = snn_block(token_dim, hidden, dropout)
        self.attention = GatedAttention(hidden, attn_dim, 0.0)
        self.classifier = nn.Sequential(FastDropout(dropout), nn.Linear(hidden, n_classes))
        init_max_weights(self)

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.fc1(tokens)  # (T, 256)
        a = torch.softmax(self.attention(h).T, dim=1)  # (1, T)
        f = a @ h  # (1, 256)
        return self.classifier(f), f


class PathOmicTeacher(nn.Module):
    """MKD multimodal teacher ``ABMIL_SNN`` (``online_kd.py``): attention-pooled path and omics
    embeddings fused by ``BilinearFusion`` (or the ``concat`` MLP), Linear(256, C). Default
    PyTorch init (the official class does not call ``init_max_weights``)."""

    def __init__(self, in_dim: int, token_dim: int, n_classes: int, hidden: int = 256, attn_dim: int = 128,
                 dropout: float = 0.25, fusion: str = "bilinear", fusion_scale: int = 8):
        super().__init__()
        self.wsi_net = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), FastDropout(0.25))  # hard-coded 0.25
        self.snn = snn_block(token_dim, hidden, dropout)
        self.attention_path = GatedAttention(hidden, attn_dim, 0.0)
        self.attention_snn = GatedAttention(hidden, attn_dim, 0.0)
        if fusion == "bilinear":
            self.mm = BilinearFusion(hidden, hidden, fusion_scale, fusion_scale, hidden)
        elif fusion == "concat":
            self.mm = nn.Sequential(nn.Linear(2 * hidden, 512), nn.ReLU(), nn.Linear(512, hidden), nn.ReLU())
        else:
            raise ValueError(f"fusion must be 'bilinear' or 'concat', got {fusion!r}")
        self.fusion = fusion
        self.classifier = nn.Linear(hidden, n_classes)

    def forward(self, x: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hp = self.wsi_net(x)  # (N, 256)
        hg = self.snn(tokens)  # (T, 256)
        p = torch.softmax(self.attention_path(hp).T, dim=1) @ hp  # (1, 256)
        o = torch.softmax(self.attention_snn(hg).T, dim=1) @ hg  # (1, 256)
        f = self.mm(p, o) if self.fusion == "bilinear" else self.mm(torch.cat([p, o], 1))
        return self.classifier(f), f


def check_omics(bag: Any, name: str) -> None:
    """Training bags of the omics methods must carry a 1-D omics vector (error names the slide)."""
    om = getattr(bag, "omics", None)
    if om is not None and (not torch.is_tensor(om) or om.numel() == 0):
        raise ValueError(f"{name}: slide {getattr(bag, 'slide_id', '?')}: omics must be a non-empty tensor")


# ------------------------------------------------------------------------------------------
# MKD
# ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MKDConfig:
    hidden_dim: int = 256  # online_kd.py feature_dim
    attn_dim: int = 128  # Attention_Gated(L=256, D=128)
    dropout: float = 0.25  # train_kd.py --drop_out
    n_gene_tokens: int = 16  # topk 8192 genes reshaped to (16, 512)
    fusion: str = "bilinear"  # train_kd.py --fusion
    fusion_scale: int = 8  # BilinearFusion(scale_dim1=8, scale_dim2=8)
    temperature: float = 4.0  # train_kd.py --temp
    window: int = 16  # train_kd.py --gc (window of the batch KD terms)
    window_grad: str = "recompute"  # "recompute" | "current" (module docstring)
    ce_over_window: bool | str = "auto"  # online_kd_trainer.py loss / args.gc; "auto": / the engine's accumulation
    use_sp: bool = True  # --intermediate_loss_fn SP
    use_kl: bool = True  # --logits_loss_fn KL
    use_decomposition: bool = True  # --OR OR: orthogonality + CORAL


class MKD(WindowCE, MILModel):
    """Online distillation from a multimodal and an omics teacher into a slide-only ABMIL student.
    ``forward`` returns the student's logits; with omics it also runs both teachers (extras)."""

    def __init__(self, in_dim: int, omics_dim: int | None, n_classes: int = 2, hidden_dim: int = 256,
                 attn_dim: int = 128, dropout: float = 0.25, n_gene_tokens: int = 16, fusion: str = "bilinear",
                 fusion_scale: int = 8, temperature: float = 4.0, window: int = 16, window_grad: str = "recompute",
                 ce_over_window: bool | str = "auto", use_sp: bool = True, use_kl: bool = True,
                 use_decomposition: bool = True):
        super().__init__()
        if not omics_dim:
            raise ValueError("mkd needs omics at training: build it with omics_dim = number of genes")
        if window_grad not in WINDOW_GRAD_MODES:
            raise ValueError(f"mkd: window_grad must be one of {WINDOW_GRAD_MODES}, got {window_grad!r}")
        self.tokenizer = GeneTokenizer(omics_dim, n_gene_tokens)
        td = self.tokenizer.token_dim
        self.student = ABMILNet(in_dim, n_classes, hidden_dim, attn_dim, dropout)
        self.teacher_mm = PathOmicTeacher(in_dim, td, n_classes, hidden_dim, attn_dim, dropout, fusion, fusion_scale)
        self.teacher_omics = SNNMILNet(td, n_classes, hidden_dim, attn_dim, dropout)
        self.temperature = float(temperature)
        self.window_grad = window_grad
        self.init_ce_scale(ce_over_window, window)
        self.use_sp, self.use_kl, self.use_decomposition = use_sp, use_kl, use_decomposition
        self._window = KDWindow(window)

    # ---- forward --------------------------------------------------------------------------
    def _teachers(self, bag: Any) -> dict[str, torch.Tensor]:
        x = bag.features
        tokens = self.tokenizer(bag.omics.to(x.device, x.dtype), getattr(bag, "slide_id", "?"))
        z_mm, f_mm = self.teacher_mm(x, tokens)
        z_g, f_g = self.teacher_omics(tokens)
        return {"logits_mm": z_mm, "feature_mm": f_mm, "logits_omics": z_g, "feature_omics": f_g}

    def forward(self, bag: Any) -> Output:
        check_bag(bag, "mkd")
        check_omics(bag, "mkd")
        logits, f_s, a = self.student(bag.features)
        extras: dict[str, Any] = {"bag_feature": f_s}
        if bag.omics is not None:  # training: the teachers learn online with the student
            extras.update(self._teachers(bag))
        return Output(logits, attention=a, extras=extras)

    # ---- loss -----------------------------------------------------------------------------
    def loss(self, output: Output, bag: Any) -> dict[str, torch.Tensor]:
        y = bag_label(bag)
        ce_s = F.cross_entropy(output.logits, y)
        ex = output.extras
        if "logits_mm" not in ex:  # no omics (e.g. a validation bag): the student's CE only
            return {"total": ce_s, "ce_student": ce_s}
        ce_mm = F.cross_entropy(ex["logits_mm"], y)
        ce_g = F.cross_entropy(ex["logits_omics"], y)
        terms = {"ce_student": ce_s, "ce_multimodal": ce_mm, "ce_omics": ce_g}
        total = (ce_s + ce_mm + ce_g) * self.ce_scale
        if self.training:
            rows = {"f_s": ex["bag_feature"], "z_s": output.logits, "f_mm": ex["feature_mm"],
                    "z_mm": ex["logits_mm"], "f_g": ex["feature_omics"], "z_g": ex["logits_omics"]}
            kd = self._window.push_and_reduce(bag, rows, self._release, self._window_terms)
            if kd is not None:
                total = total + kd["kd"]
                terms.update(kd)
        terms["total"] = total
        return terms

    def _release(self, prev: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The previous slide's cache: dropped (recompute: re-run later) or detached (current)."""
        return {} if self.window_grad == "recompute" else {k: v.detach() for k, v in prev.items()}

    def _window_rows(self) -> dict[str, torch.Tensor]:
        out: dict[str, list[torch.Tensor]] = {k: [] for k in ("f_s", "z_s", "f_mm", "z_mm", "f_g", "z_g")}
        for bag, rows in self._window.items:
            if not rows:  # recompute with the current weights (gradients reach this slide)
                z_s, f_s, _ = self.student(bag.features)
                t = self._teachers(bag)
                rows = {"f_s": f_s, "z_s": z_s, "f_mm": t["feature_mm"], "z_mm": t["logits_mm"],
                        "f_g": t["feature_omics"], "z_g": t["logits_omics"]}
            for k in out:
                out[k].append(rows[k])
        return {k: torch.cat(v, 0) for k, v in out.items()}

    def _window_terms(self) -> dict[str, torch.Tensor]:
        r = self._window_rows()
        b = r["f_s"].shape[0]
        zero = r["f_s"].new_zeros(())
        sp = ((similarity_preserving(r["f_s"], r["f_mm"]) + similarity_preserving(r["f_s"], r["f_g"])) * b
              if self.use_sp else zero)
        t = self.temperature
        kl = (distill_kl(r["z_s"], r["z_mm"].detach(), t) + distill_kl(r["z_mm"], r["z_s"].detach(), t)
              + distill_kl(r["z_s"], r["z_g"].detach(), t) + distill_kl(r["z_g"], r["z_s"].detach(), t)
              if self.use_kl else zero)
        if self.use_decomposition:
            orth = mkd_orthogonality(r["f_s"], r["f_mm"], r["f_g"])
            cor = coral(r["f_mm"], r["f_s"]) + coral(r["f_g"], r["f_s"]) + coral(r["f_g"], r["f_mm"])
        else:
            orth = cor = zero
        return {"kd": sp + kl + orth + cor, "sp": sp, "kl": kl, "orth": orth, "coral": cor}

    # ---- hooks ----------------------------------------------------------------------------
    def on_fit_start(self, train_bags) -> None:
        self._window.clear()

    def on_epoch_start(self, epoch: int) -> None:
        self._window.clear()  # the official window restarts with the loader every epoch


def build(in_dim: int, omics_dim: int | None, n_classes: int, **hp: Any) -> MKD:
    return MKD(in_dim, omics_dim, n_classes, **hp)


MKD_REPO = "zqb77/MICCAI25@545555a"

# train_kd.py with the README's flags (README.md:L19: --weighted_sample --early_stopping).
RECIPE = Recipe(
    name="official", optimizer="adamw", lr=2e-4, weight_decay=1e-5, epochs=100, scheduler="cosine", t_max=50,
    eta_min=0.0, grad_accumulation=16, accumulate_scaled=False, partial_accumulation="discard", grad_clip=None,
    monitor="val_auc", patience=5, min_epochs=7, balanced_sampling=True,
    sources={
        "optimizer": f"{MKD_REPO} train_kd.py:L65-66, utils/utils_train.py:L42-43 (AdamW over student and teachers)",
        "lr": f"{MKD_REPO} train_kd.py:L73 (2e-4)", "weight_decay": f"{MKD_REPO} train_kd.py:L77 (--reg 1e-5)",
        "epochs": f"{MKD_REPO} train_kd.py:L71 (100)",
        "scheduler": f"{MKD_REPO} utils/core_utils_train.py:L250 (CosineAnnealingLR(T_max=50)), "
                     "trainer/online_kd_trainer.py:L166 (per epoch)",
        "grad_accumulation": f"{MKD_REPO} train_kd.py:L69-70 (--gc 16), trainer/online_kd_trainer.py:L91-139 "
                             "(CE / gc per slide in the model, window terms once, one step per 16 slides)",
        "partial_accumulation": f"{MKD_REPO} trainer/online_kd_trainer.py:L149-151 (leftover slides: zero_grad, no step)",
        "monitor": f"{MKD_REPO} trainer/online_kd_trainer.py:L217-220, L232 (mean validation AUC of the student "
                   "and both teachers)",
        "patience": f"{MKD_REPO} utils/core_utils_train.py:L257-258 (patience 5, stop_epoch 5), L45 (epoch > stop_epoch)",
        "balanced_sampling": f"{MKD_REPO} README.md:L19 (--weighted_sample), utils/utils_train.py:L105-107",
        "loss": f"{MKD_REPO} trainer/online_kd_trainer.py:L76, L106-137 (3 CE + SP + KL + orthogonality + MMD)",
        "seed": f"{MKD_REPO} train_kd.py:L31 (1)",
    },
    notes="The official monitor averages the student's and both teachers' validation AUCs; the teachers need "
          "omics, which validation slides never carry here, so the student's validation AUC is monitored.")


SPEC = MethodSpec(
    "mkd", family="kd", display="MKD", job_cost=4.7, build=build, config=MKDConfig,
    needs=frozenset({"omics_train"}),
    recipes={"wsi": RECIPE},
    search_space=("lr=1e-5:1e-3:log", "weight_decay=1e-6:1e-2:log", "dropout=0.0:0.5", "temperature=1.0:8.0"),
    scale_params={"small": {"hidden_dim": 64, "attn_dim": 32}},
    paper="Zhang et al., MICCAI 2025 (arXiv 2508.17213); journal version GMKDN (IEEE TMI)",
    code="zqb77/MICCAI25 models/online_kd.py, models/snnmil.py, trainer/online_kd_trainer.py",
    description="online KD: ABMIL student + multimodal and omics teachers, SP/KL/orthogonality/CORAL")
