"""TDC: teacher-student contrastive distillation with discrepancy weights (offline, three teachers).

What "TDC" is (and the uncertainty)
-----------------------------------
MoMKD (arXiv 2602.21395) lists "TDC" as a multimodal-distillation baseline; we could not find the
expansion of the acronym nor MoMKD's reference entry. The implementation MoMKD most plausibly ran
is the loss the MKD code base (zqb77/MICCAI25 @ 545555a, which also ships MoMKD's other baselines)
names ``TDCLoss``: ``utils/loss/CRD_criterion_v10.py`` (header "Author: Xiaohan Xing, Date:
2023/02/04"), driven by ``trainer/batch_kd_trainer.py`` (``--intermediate_loss_fn TDC``). It is
Xing et al.'s ``CRDLoss`` from CityU-AIM-Group/MultiModal-learning ``MIA 2023/
stage2_unimodal_student/CL_utils/CRD_criterion_v10.py`` (Xing et al., "Comprehensive Learning and
Adaptive Teaching: Distilling Multi-Modal Knowledge for Pathological Glioma Grading", MedIA 2024;
successor of "Discrepancy and Gradient-guided Multi-modal Knowledge Distillation for Pathological
Glioma Grading", MICCAI 2022). This module follows the MKD code base's TDC path exactly where it
exists (networks, loss wiring, weights); the MICCAI 2022 gradient-based "GK-Refine" loss dropping
is NOT part of that path and is not implemented.

Method (``batch_kd_trainer.py`` + ``CRD_criterion_v10.py``)
---------------------------------------------------------
Stage "teachers": three teachers trained on the training part with cross-entropy (MKD
``train_tea.py``): T1 multimodal ``ABMIL_SNN`` (slides + omics tokens, gated bilinear fusion),
T2 slide-only ``ABMIL``, T3 omics-only ``SNNMIL`` (same networks as :mod:`baselines.mkd`). The
official script trains each teacher in its own run; here they share one stage with the sum of
their CEs (independent networks and a per-parameter optimiser, so this differs from separate
runs only by the shared gradient-clipping norm, schedule and stopping epoch).

Stage "student": teachers frozen (no_grad). Per slide ``CE(student) / gc``. Every ``gc`` = 16
slides, for each teacher t:

* discrepancy weights w_i = min(max(conf_t - conf_s, 0), 1), conf = log p_gt - log p_best_wrong
  (``assign_sample_weights(..., 1, 1)``);
* ``TDCLoss``: student/teacher features -> Embed (Linear 256 -> 128, L2) -> NCE against a
  momentum memory bank of every training sample (positives: the ``nce_p`` most similar
  same-class memory rows, similarity-weighted; ``nce_k`` random negatives; temperature 0.07;
  Z fixed at the first call), both directions, each weighted by w_i; memory momentum 0.5;
* logit KD ``DistillKL(T)(z_s, z_t)``;

window loss = sum over teachers of (TDC + KL), weights 1, one step.

Defaults and their sources
--------------------------
The script that built ``TDCLoss`` for the MKD trainer is missing from the snapshot (only
``.pyc`` files reference it). Its option object ``utils/opt.py`` survives as
``utils/__pycache__/opt.cpython-39.pyc``; its constructor defaults (read from the marshalled
constants) are s_dim 128, t_dim 128, feat_dim 128, nce_k 4, nce_t 0.07, nce_m 0.5, nce_p 1,
pos_extra 'neighbors', n_data 1000. We use feat_dim 128, nce_k 4, nce_t 0.07, nce_m 0.5, nce_p 1,
neighbours; s_dim = t_dim = 256 (the networks' feature width) and n_data = number of training
slides (the trainer draws negatives from ``range(len(loader))``). Xing's own CLAT script uses
nce_k 4096, nce_p 6, kd_T 1, CRD weight 0.05. KD temperature: MKD scripts' ``--temp`` 4.

Adaptations and official quirks (documented choices)
----------------------------------------------------
* Window gradients: as in :mod:`baselines.mkd` (``window_grad``): the official code accumulates
  16 slides and steps once; here the engine steps per slide, and by default the student is re-run
  on the window's earlier slides so the window terms reach all 16 (teacher outputs are cached:
  frozen teachers in eval mode are deterministic). The discrepancy weights then use the re-run
  student's predictions (officially: each slide's own forward, with the weights of the window
  start). CE is divided by the slides the engine accumulates per step (``ce_over_window="auto"``,
  as :mod:`baselines.mkd`): by 16 under the official recipe, not under the shared one.
* Teachers run in eval mode in the student stage. (The MKD trainer never calls ``.eval()`` on
  the loaded teachers, so their dropout stayed on; the wiring code is missing, so this cannot be
  confirmed, and a frozen teacher with random dropout is taken as an oversight.)
* ``batch_kd_trainer.py`` stores the student prediction as ``F.softmax(logits, dim=0)`` of a
  (1, C) tensor, which is all ones: conf_s = 0 and the weights depend on the teacher only. The
  default reproduces the code (``student_softmax_dim0=True``); the variant ``per_sample`` uses the
  intended student confidence.
* For nce_p = 1 the official ``ContrastLoss_v2`` broadcasts a (B,) and a (B, 1) tensor into a
  (B, B) matrix: each sample gets the window's positive terms plus B times its own negative term
  (:func:`baselines.kd_losses.nce_loss`). The default is that official form (``nce_form="official"``);
  the variant ``per_sample`` is the intended per-sample CRD loss.
* The memory bank is a non-persistent buffer sized from the training bags in ``on_fit_start``
  (slide -> row by ``slide_id``); its random init and the negatives use a generator seeded from
  the global (engine-seeded) RNG. The memory update is applied in ``on_step_end``.
* Teacher stage and validation: the official teachers are each early-stopped on their own
  validation AUC with validation omics. Our validation bags carry no omics, so during the teacher
  stage ``forward`` returns the slide-only teacher's logits and the engine early-stops (and picks
  the checkpoint of) all three teachers on that teacher's validation AUC; ``teacher_epochs > 0``
  trains them a fixed number of epochs without early stopping instead.
* Omics as 16 tokens of ceil(G / 16) genes (as :mod:`baselines.mkd`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from baselines.kd_losses import NCE_FORMS, KDWindow, TDCCriterion, WindowCE, discrepancy_weights, distill_kl
from baselines.mkd import WINDOW_GRAD_MODES, ABMILNet, PathOmicTeacher, SNNMILNet, check_omics
from baselines.omics_utils import GeneTokenizer
from benchmarks.spec import MethodSpec
from momkd.contract import MILModel, Output, bag_label, check_bag
from momkd.recipe import Recipe

TEACHERS = ("multimodal", "wsi", "omics")


@dataclass(frozen=True)
class TDCConfig:
    hidden_dim: int = 256  # online_kd.py / batch_kd feature_dim (s_dim = t_dim)
    attn_dim: int = 128  # Attention_Gated D
    dropout: float = 0.25  # --drop_out
    n_gene_tokens: int = 16  # 8192 genes as (16, 512)
    fusion: str = "bilinear"  # multimodal teacher fusion (train_tea.py --fusion)
    fusion_scale: int = 8  # BilinearFusion scale_dim
    feat_dim: int = 128  # utils/opt.py Options.feat_dim (CLAT --feat_dim 128)
    nce_k: int = 4  # utils/opt.py Options.nce_k (CLAT script: 4096)
    nce_p: int = 1  # utils/opt.py Options.nce_p (CLAT script: 6)
    nce_t: float = 0.07  # Options.nce_t / CLAT --nce_t
    nce_m: float = 0.5  # Options.nce_m / CLAT --nce_m (memory momentum)
    max_discrep: float = 1.0  # assign_sample_weights(student, teacher, y, 1, 1)
    temperature: float = 4.0  # MKD scripts --temp (CLAT --kd_T 1)
    window: int = 16  # --gc
    window_grad: str = "recompute"  # "recompute" | "current" (baselines.mkd docstring)
    ce_over_window: bool | str = "auto"  # batch_kd_trainer.py loss / args.gc; "auto": / the engine's accumulation
    student_softmax_dim0: bool = True  # batch_kd_trainer's softmax(dim=0): conf_s = 0 (False: the intended term)
    teacher_epochs: int = 0  # 0: teacher stage early-stopped on the slide teacher; > 0: fixed epochs
    nce_form: str = "official"  # ContrastLoss_v2 as written (broadcast for nce_p = 1) | "per_sample" (intended)


class TDC(WindowCE, MILModel):
    """Offline distillation: three frozen teachers -> slide-only ABMIL student (stages
    ``teachers`` then ``student``). ``forward`` returns the slide teacher's logits in the teacher
    stage and the student's in the student stage; omics never change them."""

    stages = ("teachers", "student")

    def __init__(self, in_dim: int, omics_dim: int | None, n_classes: int = 2, hidden_dim: int = 256,
                 attn_dim: int = 128, dropout: float = 0.25, n_gene_tokens: int = 16, fusion: str = "bilinear",
                 fusion_scale: int = 8, feat_dim: int = 128, nce_k: int = 4, nce_p: int = 1, nce_t: float = 0.07,
                 nce_m: float = 0.5, max_discrep: float = 1.0, temperature: float = 4.0, window: int = 16,
                 window_grad: str = "recompute", ce_over_window: bool | str = "auto", student_softmax_dim0: bool = True,
                 teacher_epochs: int = 0, nce_form: str = "official"):
        super().__init__()
        if not omics_dim:
            raise ValueError("tdc needs omics at training: build it with omics_dim = number of genes")
        if window_grad not in WINDOW_GRAD_MODES:
            raise ValueError(f"tdc: window_grad must be one of {WINDOW_GRAD_MODES}, got {window_grad!r}")
        if nce_p < 1 or nce_k < 1:
            raise ValueError(f"tdc: need nce_p >= 1 and nce_k >= 1, got {nce_p}, {nce_k}")
        self.tokenizer = GeneTokenizer(omics_dim, n_gene_tokens)
        td = self.tokenizer.token_dim
        self.student = ABMILNet(in_dim, n_classes, hidden_dim, attn_dim, dropout)
        self.teacher_mm = PathOmicTeacher(in_dim, td, n_classes, hidden_dim, attn_dim, dropout, fusion, fusion_scale)
        self.teacher_wsi = ABMILNet(in_dim, n_classes, hidden_dim, attn_dim, dropout)
        self.teacher_omics = SNNMILNet(td, n_classes, hidden_dim, attn_dim, dropout)
        if nce_form not in NCE_FORMS:
            raise ValueError(f"tdc: nce_form must be one of {NCE_FORMS}, got {nce_form!r}")
        self.criteria = nn.ModuleDict({t: TDCCriterion(hidden_dim, hidden_dim, feat_dim, nce_k, nce_t, nce_m, nce_p,
                                                       nce_form) for t in TEACHERS})
        self.max_discrep = float(max_discrep)
        self.temperature = float(temperature)
        self.window_grad = window_grad
        self.init_ce_scale(ce_over_window, window)
        self.student_softmax_dim0 = bool(student_softmax_dim0)
        self.teacher_epochs = int(teacher_epochs)
        self._window = KDWindow(window)
        self._teacher_cache: dict[str, dict] = {}  # slide_id -> frozen-teacher outputs (student stage)
        self._index: dict[str, int] = {}
        self._gen: torch.Generator | None = None

    # ---- stages ---------------------------------------------------------------------------
    def teachers(self) -> dict[str, nn.Module]:
        return {"multimodal": self.teacher_mm, "wsi": self.teacher_wsi, "omics": self.teacher_omics}

    def set_stage(self, name: str) -> None:
        super().set_stage(name)
        self._window.clear()
        self._teacher_cache.clear()
        self.train(self.training)

    def train(self, mode: bool = True) -> "TDC":
        super().train(mode)
        if self.stage == "student":  # frozen teachers are deterministic
            for t in self.teachers().values():
                t.eval()
        return self

    def trainable_parameters(self):
        if self.stage == "teachers":
            return [p for t in self.teachers().values() for p in t.parameters() if p.requires_grad]
        return [p for m in (self.student, self.criteria) for p in m.parameters() if p.requires_grad]

    def stage_options(self, stage: str) -> dict:
        if stage == "teachers" and self.teacher_epochs > 0:
            return {"max_epochs": self.teacher_epochs, "early_stopping": False}
        return {}

    # ---- forward --------------------------------------------------------------------------
    def _teacher_outputs(self, bag: Any) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        x = bag.features
        tokens = self.tokenizer(bag.omics.to(x.device, x.dtype), getattr(bag, "slide_id", "?"))
        z_w, f_w, _ = self.teacher_wsi(x)
        return {"multimodal": self.teacher_mm(x, tokens), "wsi": (z_w, f_w), "omics": self.teacher_omics(tokens)}

    def forward(self, bag: Any) -> Output:
        check_bag(bag, "tdc")
        check_omics(bag, "tdc")
        x = bag.features
        if self.stage == "teachers":
            logits, f, a = self.teacher_wsi(x)
            extras: dict[str, Any] = {"bag_feature": f}
            if bag.omics is not None:
                tokens = self.tokenizer(bag.omics.to(x.device, x.dtype), getattr(bag, "slide_id", "?"))
                extras["logits_mm"], _ = self.teacher_mm(x, tokens)
                extras["logits_omics"], _ = self.teacher_omics(tokens)
            return Output(logits, attention=a, extras=extras)
        logits, f_s, a = self.student(x)
        extras = {"bag_feature": f_s}
        if bag.omics is not None:
            extras["teachers"] = self._frozen_teacher_outputs(bag)
        return Output(logits, attention=a, extras=extras)

    def _frozen_teacher_outputs(self, bag: Any) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """The teachers' outputs for a training slide, computed once per student stage: the
        teachers are frozen and in eval mode, so every epoch would recompute the same values
        (the cache is emptied by ``on_fit_start`` and ``set_stage``)."""
        sid = getattr(bag, "slide_id", None)
        hit = self._teacher_cache.get(str(sid)) if sid is not None else None
        if hit is None:
            with torch.no_grad():
                hit = self._teacher_outputs(bag)
            if sid is not None:
                self._teacher_cache[str(sid)] = hit
        return hit

    # ---- loss -----------------------------------------------------------------------------
    def loss(self, output: Output, bag: Any) -> dict[str, torch.Tensor]:
        y = bag_label(bag)
        ex = output.extras
        if self.stage == "teachers":
            ce_w = F.cross_entropy(output.logits, y)
            terms = {"ce_wsi": ce_w}
            total = ce_w
            if "logits_mm" in ex:
                terms["ce_multimodal"] = F.cross_entropy(ex["logits_mm"], y)
                terms["ce_omics"] = F.cross_entropy(ex["logits_omics"], y)
                total = total + terms["ce_multimodal"] + terms["ce_omics"]
            terms["total"] = total
            return terms
        ce = F.cross_entropy(output.logits, y)
        if "teachers" not in ex:
            return {"total": ce, "ce_student": ce}
        terms = {"ce_student": ce}
        total = ce * self.ce_scale
        if self.training:
            rows = {"f_s": ex["bag_feature"], "z_s": output.logits, "y": y,
                    "idx": torch.tensor([self._row(bag)], device=y.device), "teachers": ex["teachers"]}
            kd = self._window.push_and_reduce(bag, rows, self._release, self._window_terms)
            if kd is not None:
                total = total + kd["kd"]
                terms.update(kd)
        terms["total"] = total
        return terms

    def _row(self, bag: Any) -> int:
        sid = str(getattr(bag, "slide_id", "?"))
        if sid not in self._index:
            raise KeyError(f"tdc: slide {sid} was not among the training bags given to on_fit_start "
                           "(the memory bank has one row per training slide)")
        return self._index[sid]

    def _release(self, prev: dict[str, Any]) -> dict[str, Any]:
        """The previous slide's cache: labels, bank rows and frozen-teacher outputs kept; the
        student's graph dropped (recompute) or detached (current)."""
        keep = {k: prev[k] for k in ("y", "idx", "teachers")}
        if self.window_grad == "current":
            keep.update(f_s=prev["f_s"].detach(), z_s=prev["z_s"].detach())
        return keep

    def _window_terms(self) -> dict[str, torch.Tensor]:
        f_s, z_s, ys, idx = [], [], [], []
        t_z: dict[str, list] = {t: [] for t in TEACHERS}
        t_f: dict[str, list] = {t: [] for t in TEACHERS}
        for bag, r in self._window.items:
            if "f_s" not in r:  # recompute the student with the current weights
                z, f, _ = self.student(bag.features)
            else:
                z, f = r["z_s"], r["f_s"]
            f_s.append(f)
            z_s.append(z)
            ys.append(r["y"])
            idx.append(r["idx"])
            for t in TEACHERS:
                t_z[t].append(r["teachers"][t][0])
                t_f[t].append(r["teachers"][t][1])
        f_s_, z_s_, y_, idx_ = torch.cat(f_s), torch.cat(z_s), torch.cat(ys), torch.cat(idx)
        # one set of negatives per window, shared by the three teachers (batch_sample_idxs)
        neg = self.criteria[TEACHERS[0]].contrast.sample_negatives(idx_, self._generator())
        out: dict[str, torch.Tensor] = {}
        kd = f_s_.new_zeros(())
        for t in TEACHERS:
            zt, ft = torch.cat(t_z[t]).detach(), torch.cat(t_f[t]).detach()
            w = discrepancy_weights(z_s_.detach(), zt, y_, self.max_discrep, self.student_softmax_dim0)
            nce, _ = self.criteria[t](w, f_s_, ft, idx_, neg)
            kl = distill_kl(z_s_, zt, self.temperature)
            out[f"tdc_{t}"], out[f"kl_{t}"], out[f"weight_{t}"] = nce, kl, w.mean()
            kd = kd + nce.to(kd.dtype) + kl
        out["kd"] = kd
        return out

    def _generator(self) -> torch.Generator:
        if self._gen is None:
            self._gen = torch.Generator().manual_seed(int(torch.randint(0, 2**31 - 1, (1,))))
        return self._gen

    # ---- hooks ----------------------------------------------------------------------------
    def on_fit_start(self, train_bags) -> None:
        self._window.clear()
        self._teacher_cache.clear()
        if self.stage != "student":
            return
        bags = list(train_bags)
        ids = [str(getattr(b, "slide_id", "?")) for b in bags]
        if len(set(ids)) != len(ids):
            dup = sorted({s for s in ids if ids.count(s) > 1})[:5]
            raise ValueError(f"tdc: duplicate slide ids among training bags (e.g. {dup}); the memory bank "
                             "needs one row per slide")
        self._index = {s: i for i, s in enumerate(ids)}
        labels = torch.tensor([int(bag_label(b)) for b in bags])
        self._gen = torch.Generator().manual_seed(int(torch.randint(0, 2**31 - 1, (1,))))
        for c in self.criteria.values():
            c.contrast.reset(labels, self._gen)

    def on_epoch_start(self, epoch: int) -> None:
        self._window.clear()

    def on_step_end(self) -> None:
        for c in self.criteria.values():
            c.apply_update()


def build(in_dim: int, omics_dim: int | None, n_classes: int, **hp: Any) -> TDC:
    return TDC(in_dim, omics_dim, n_classes, **hp)


# The MKD code base ships TDCLoss but never wires it (no script instantiates it; zqb77/MICCAI25@545555a
# utils/loss/CRD_criterion_v10.py:L180-238, trainer/batch_kd_trainer.py is imported by nothing): the
# student stage follows batch_kd_trainer.py with train_kd.py's options, the teachers train_tea.py's.
RECIPE = Recipe(
    name="official", optimizer="adamw", lr=2e-4, weight_decay=1e-5, epochs=100, scheduler="cosine", t_max=50,
    grad_accumulation=16, accumulate_scaled=False, partial_accumulation="discard", grad_clip=None,
    monitor="val_auc", patience=5, min_epochs=7, balanced_sampling=True,
    sources={
        "optimizer": "zqb77/MICCAI25@545555a train_kd.py:L65-66, utils/utils_train.py:L42-43 (AdamW)",
        "lr": "zqb77/MICCAI25@545555a train_kd.py:L73 (2e-4; the teachers' train_tea.py:L82 uses 1e-4)",
        "weight_decay": "zqb77/MICCAI25@545555a train_kd.py:L77 (1e-5)",
        "epochs": "zqb77/MICCAI25@545555a train_kd.py:L71 (100)",
        "scheduler": "zqb77/MICCAI25@545555a utils/core_utils_train.py:L250 (CosineAnnealingLR(T_max=50))",
        "grad_accumulation": "zqb77/MICCAI25@545555a trainer/batch_kd_trainer.py (CE / gc per slide, window terms "
                             "every gc = 16 slides, then one step)",
        "monitor": "zqb77/MICCAI25@545555a utils/core_utils_train.py:L257-258 (val AUC, patience 5, stop_epoch 5)",
        "balanced_sampling": "zqb77/MICCAI25@545555a README.md:L19 (--weighted_sample)",
        "loss": "zqb77/MICCAI25@545555a trainer/batch_kd_trainer.py:L179-185, L229 (3 x (TDCLoss + KL)); "
                "utils/loss/CRD_criterion_v10.py:L280-314 (ContrastLoss_v2)",
    },
    notes="TDCLoss is not wired into any official script, so this recipe is the MKD trainer's (the nearest "
          "official one). One optimiser for both stages (the teachers' official lr is 1e-4).")


SPEC = MethodSpec(
    "tdc", family="kd", display="TDC", job_cost=5.0, build=build, config=TDCConfig,
    needs=frozenset({"omics_train"}),
    # default: ContrastLoss_v2 and the student term as the official code computes them; the
    # variant: the per-sample CRD loss and the intended student confidence
    variants={"per_sample": {"nce_form": "per_sample", "student_softmax_dim0": False}},
    recipes={"wsi": RECIPE},
    search_space=("lr=1e-5:1e-3:log", "weight_decay=1e-6:1e-2:log", "dropout=0.0:0.5", "temperature=1.0:8.0"),
    scale_params={"small": {"hidden_dim": 64, "attn_dim": 32}},
    paper="TDCLoss of Xing et al. (MICCAI 2022 DC-Distill; MedIA 2024 CLAT) as shipped in the MKD code base; "
          "MoMKD's exact 'TDC' reference not found (acronym expansion uncertain)",
    code="zqb77/MICCAI25 utils/loss/CRD_criterion_v10.py, trainer/batch_kd_trainer.py; "
         "CityU-AIM-Group/MultiModal-learning MIA 2023/stage2_unimodal_student",
    description="offline KD from 3 frozen teachers: discrepancy-weighted CRD-NCE with memory bank + logit KD")
