"""DTFD-MIL: double-tier feature distillation MIL (Zhang et al., CVPR 2022).

Follows hrzhang1123/DTFD-MIL @ 10964f4 (``Model/network.py``, ``Model/Attention.py``, ``utils.py``
``get_cam_1d``, ``Main_DTFD_MIL.py``). Per slide:

1. The N instances are split into G pseudo-bags (official: ``random.shuffle`` + ``np.array_split``;
   here a seeded ``torch.randperm`` + ``torch.tensor_split``, which has the same group sizes: the
   first N mod G groups get one extra row). ``forward(bag, groups=[[row indices], ...])`` takes the
   split explicitly (used by the golden test).
2. ``dim_reduction`` (Linear(D, 512, no bias)-ReLU, optional residual blocks) and raw gated attention
   scores (512-128-1) on the whole bag; softmax of the scores inside each pseudo-bag; the
   attention-pooled pseudo-bag feature goes through the tier-1 classifier -> tier-1 logits (G, C).
   (The official training path recomputes both per pseudo-bag; identical maths.)
3. Instance CAM = attention-weighted rows @ classifier.fc.weight^T (bias excluded, ``get_cam_1d``),
   softmax over classes, rows sorted by the LAST class probability, descending. Distilled rows per
   pseudo-bag: ``AFS`` the pooled feature (1 row); ``MaxS`` the top ``total_instance // numGroup``
   rows of the reduced features; ``MaxMinS`` the top then the bottom rows.
4. Tier 2: gated attention over the distilled rows, pooling, Linear(512, C) -> slide logits (1, C).

Loss (``Main_DTFD_MIL.train_attention_preFeature_DTFD``): tier-1 = mean CE of the G pseudo-bag
logits against the slide label; tier-2 = CE of the tier-2 logits. ``total = tier1 + tier2``.

The official update and why one backward of ``total`` is equivalent
------------------------------------------------------------------------
The script keeps two Adam optimizers (same lr 1e-4 and weight decay 1e-4, same MultiStepLR):
``opt0`` over dim_reduction + attention + classifier and ``opt1`` over the tier-2 module. Per slide:
``opt0.zero_grad(); loss0.backward(retain_graph=True); clip; opt0.step()`` and then
``opt1.zero_grad(); loss1.backward(); clip; opt1.step()`` with tier 2 fed the NON-detached
distilled features computed before ``opt0.step()``. On current PyTorch the second backward fails for
the default ``AFS`` ("one of the variables needed for gradient computation has been modified by an
inplace operation": the pooled feature depends on attention weights that ``opt0.step()`` changed in
place); PyTorch 1.4 (the README's version) updated ``.data`` and raised nothing. What that update
did:

* ``loss1.backward()`` also wrote gradients into the tier-1 parameters, but ``opt1`` does not own
  them and ``opt0.zero_grad()`` erases them before the next ``loss0.backward()``: tier 2 never
  moved tier 1.
* The tier-2 gradients depend only on the distilled features (activations computed before the
  tier-1 step) and the tier-2 weights (not yet stepped).

So here tier 2 reads the distilled features DETACHED and ``total = tier1 + tier2`` gets one backward:
tier-1 parameters receive exactly d(tier1)/d(theta_1), tier-2 parameters exactly
d(tier2)/d(theta_2), and one Adam over all parameters (Adam is per-parameter, both official
optimizers share their settings) makes the same update. The official clipping is per module
(norm 5 for dim_reduction, attention, classifier and the tier-2 module separately):
``grad_clip_groups()`` lists those groups for an engine that wants to reproduce it.
``tests/test_dtfdmil.py`` checks this against the literal official two-optimizer step (MaxMinS,
which still runs on current PyTorch) and shows the official AFS step raising the in-place error.

Deviations (documented choices)
-------------------------------
* Fewer instances than pseudo-bags (N < G): ``np.array_split`` would give empty pseudo-bags (a zero
  AFS row and a bias-only tier-1 logit in the loss). Empty pseudo-bags are dropped here, so the
  split has min(G, N) groups of one row each; N = 1 gives one pseudo-bag. Empty explicit groups are
  dropped the same way.
* ``total_instance // numGroup == 0`` with MaxS/MaxMinS would select no rows (MaxS) or, through
  ``sort_idx[-0:]``, every row (MaxMinS): rejected at construction.
* The split generator is the model's own (``seed``, default 32 as the script seeds ``random``), reset
  by ``on_fit_start``; each training forward draws a new split. At eval (official: still random) the
  split is drawn from a fresh generator seeded with ``seed``, so a slide's test prediction does not
  depend on evaluation order. ``num_mean_inference`` > 1 averages the tier-2 softmax over that many
  splits (official ``num_MeanInference``); ``logits`` is then log of the mean probability.
* Sorting for MaxS/MaxMinS is stable (ties keep row order); the official sort is unstable.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from baselines.layers import FastDropout
from benchmarks.spec import MethodSpec
from momkd.contract import MILModel, Output, bag_label, check_bag
from momkd.recipe import Recipe

DISTILL_TYPES = ("AFS", "MaxS", "MaxMinS")


@dataclass(frozen=True)
class DTFDMILConfig:
    m_dim: int = 512  # Main_DTFD_MIL.py --mDim
    attn_dim: int = 128  # Model/Attention.py Attention_Gated(L, D=128, K=1)
    num_group: int = 4  # Main_DTFD_MIL.py --numGroup (training)
    total_instance: int = 4  # --total_instance (instances per group = total_instance // num_group)
    num_group_test: int = 4  # --numGroup_test
    total_instance_test: int = 4  # --total_instance_test
    distill: str = "AFS"  # --distill_type (MaxMinS, MaxS, AFS)
    droprate: float = 0.0  # --droprate (tier-1 Classifier_1fc)
    droprate_2: float = 0.0  # --droprate_2 (tier-2 Attention_with_Classifier)
    num_layer_res: int = 0  # --numLayer_Res (residual blocks in DimReduction)
    num_mean_inference: int = 1  # --num_MeanInference
    seed: int = 32  # Main_DTFD_MIL.py: random.seed(32) drives the pseudo-bag shuffle


# ---- modules (official key names, so the released state_dict loads as is) -----------------------
class _ResidualBlock(nn.Module):
    """``Model/network.py`` residual_block: x + ReLU(Lin(ReLU(Lin(x)))), no biases."""

    def __init__(self, dim: int):
        super().__init__()
        self.block = nn.Sequential(nn.Linear(dim, dim, bias=False), nn.ReLU(),
                                   nn.Linear(dim, dim, bias=False), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x)


class DimReduction(nn.Module):
    """``Model/network.py`` DimReduction: Linear(D, m, bias=False)-ReLU (+ residual blocks)."""

    def __init__(self, in_dim: int, m_dim: int = 512, num_layer_res: int = 0):
        super().__init__()
        self.fc1 = nn.Linear(in_dim, m_dim, bias=False)
        self.resBlocks = nn.Sequential(*[_ResidualBlock(m_dim) for _ in range(num_layer_res)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, D) -> (N, m)
        return self.resBlocks(F.relu(self.fc1(x)))


class GatedScores(nn.Module):
    """``Model/Attention.py`` Attention_Gated with K=1: raw scores w^T(tanh(V h) * sigm(U h)) + b."""

    def __init__(self, dim: int = 512, hidden: int = 128):
        super().__init__()
        self.attention_V = nn.Sequential(nn.Linear(dim, hidden), nn.Tanh())
        self.attention_U = nn.Sequential(nn.Linear(dim, hidden), nn.Sigmoid())
        self.attention_weights = nn.Linear(hidden, 1)

    def forward(self, h: torch.Tensor) -> torch.Tensor:  # (N, m) -> (N,) pre-softmax
        return self.attention_weights(self.attention_V(h) * self.attention_U(h))[:, 0]


class Classifier1fc(nn.Module):
    """``Model/network.py`` Classifier_1fc: optional Dropout, then Linear(m, C)."""

    def __init__(self, dim: int, n_classes: int, droprate: float = 0.0):
        super().__init__()
        self.fc = nn.Linear(dim, n_classes)
        self.dropout = FastDropout(droprate) if droprate else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(x))


class AttentionWithClassifier(nn.Module):
    """``Model/Attention.py`` Attention_with_Classifier (tier 2): softmax gated attention over the
    rows, pooling, Classifier_1fc. Returns (logits (1, C), attention (1, R))."""

    def __init__(self, dim: int = 512, hidden: int = 128, n_classes: int = 2, droprate: float = 0.0):
        super().__init__()
        self.attention = GatedScores(dim, hidden)
        self.classifier = Classifier1fc(dim, n_classes, droprate)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a = torch.softmax(self.attention(x), dim=0)[None]  # (1, R)
        return self.classifier(a @ x), a


# ---- the model --------------------------------------------------------------------------------
class DTFDMIL(MILModel):
    """DTFD-MIL for one slide. ``forward(bag, groups=None) -> Output``: ``logits`` = tier-2 (1, C),
    ``attention`` (N,) = within-pseudo-bag softmax weight of each row (0 for rows in no group),
    ``extras``: ``tier1_logits`` (G, C), ``distilled_features`` (R, m), ``raw_attention`` (N,),
    ``tier2_attention`` (1, R), ``groups`` (list of LongTensor), ``distilled_index`` (R,)
    original rows (MaxS/MaxMinS) and ``mean_prob`` (1, C) when several eval splits are averaged."""

    def __init__(self, in_dim: int, n_classes: int = 2, m_dim: int = 512, attn_dim: int = 128,
                 num_group: int = 4, total_instance: int = 4, num_group_test: int = 4,
                 total_instance_test: int = 4, distill: str = "AFS", droprate: float = 0.0,
                 droprate_2: float = 0.0, num_layer_res: int = 0, num_mean_inference: int = 1,
                 seed: int = 32):
        super().__init__()
        if distill not in DISTILL_TYPES:
            raise ValueError(f"dtfdmil: distill {distill!r} not in {DISTILL_TYPES}")
        for name, g, t in (("", num_group, total_instance), ("_test", num_group_test, total_instance_test)):
            if g < 1:
                raise ValueError(f"dtfdmil: num_group{name} must be >= 1, got {g}")
            if distill != "AFS" and t // g < 1:
                raise ValueError(f"dtfdmil: total_instance{name} // num_group{name} = {t} // {g} = 0 "
                                 f"rows per pseudo-bag for {distill}; set total_instance{name} >= num_group{name}")
        if num_mean_inference < 1:
            raise ValueError(f"dtfdmil: num_mean_inference must be >= 1, got {num_mean_inference}")
        self.n_classes = n_classes
        self.num_group, self.total_instance = num_group, total_instance
        self.num_group_test, self.total_instance_test = num_group_test, total_instance_test
        self.distill = distill
        self.num_mean_inference = num_mean_inference
        self.seed = seed
        self._generator = torch.Generator().manual_seed(seed)

        self.dim_reduction = DimReduction(in_dim, m_dim, num_layer_res)
        self.attention = GatedScores(m_dim, attn_dim)
        self.classifier = Classifier1fc(m_dim, n_classes, droprate)
        self.att_classifier = AttentionWithClassifier(m_dim, attn_dim, n_classes, droprate_2)

    # -- pseudo-bags ------------------------------------------------------------------------
    def random_groups(self, n_patches: int, n_groups: int, generator: torch.Generator) -> list[torch.Tensor]:
        """Shuffle then split into ``n_groups`` near-equal parts (np.array_split sizes); empty dropped."""
        perm = torch.randperm(n_patches, generator=generator)
        return [g for g in torch.tensor_split(perm, n_groups) if g.numel()]

    def _check_groups(self, groups: Sequence[Sequence[int]], n_patches: int, sid: str) -> list[torch.Tensor]:
        out = [torch.as_tensor(list(g) if not torch.is_tensor(g) else g, dtype=torch.long).reshape(-1)
               for g in groups]
        out = [g for g in out if g.numel()]
        if not out:
            raise ValueError(f"dtfdmil: slide {sid}: all {len(groups)} pseudo-bag groups are empty")
        flat = torch.cat(out)
        if flat.min() < 0 or flat.max() >= n_patches:
            raise ValueError(f"dtfdmil: slide {sid}: group indices must lie in [0, {n_patches}), got "
                             f"min {int(flat.min())}, max {int(flat.max())}")
        if flat.unique().numel() != flat.numel():
            raise ValueError(f"dtfdmil: slide {sid}: a row appears in more than one pseudo-bag")
        return out

    def grad_clip_groups(self) -> dict[str, list[nn.Parameter]]:
        """The official clipping groups (each clipped to norm 5 separately, Main_DTFD_MIL.py)."""
        return {name: list(getattr(self, name).parameters())
                for name in ("dim_reduction", "attention", "classifier", "att_classifier")}

    def on_fit_start(self, train_bags: Any) -> None:
        self._generator.manual_seed(self.seed)

    # -- forward ----------------------------------------------------------------------------
    def _one_split(self, mid: torch.Tensor, raw: torch.Tensor, groups: list[torch.Tensor],
                   per_group: int) -> dict[str, Any]:
        n_patches = mid.shape[0]
        inst_att = mid.new_zeros(n_patches)
        pooled, rows, rows_idx = [], [], []
        w_cam = self.classifier.fc.weight  # (C, m): get_cam_1d takes fc.weight, not the bias
        for idx in groups:
            idx = idx.to(mid.device)
            h = mid[idx]  # (n, m)
            a = torch.softmax(raw[idx], dim=0)  # (n,) softmax inside the pseudo-bag
            inst_att = inst_att.index_put((idx,), a.to(inst_att.dtype))  # dtypes differ under autocast
            weighted = h * a[:, None]  # (n, m)
            feat = weighted.sum(0, keepdim=True)  # (1, m)
            pooled.append(feat)
            if self.distill == "AFS":
                rows.append(feat)
                continue
            with torch.no_grad():
                cam = torch.softmax(weighted @ w_cam.T, dim=1)[:, -1]  # (n,) last-class probability
                order = torch.sort(cam, descending=True, stable=True).indices
            pick = order[:per_group]
            if self.distill == "MaxMinS":
                pick = torch.cat([pick, order[-per_group:]])
            rows.append(h[pick])
            rows_idx.append(idx[pick])
        pooled_t = torch.cat(pooled)  # (G, m)
        tier1 = self.classifier(pooled_t)  # (G, C)
        distilled = torch.cat(rows)  # (R, m)
        # tier 2 reads the distilled rows detached: see the module docstring
        tier2, a2 = self.att_classifier(distilled.detach())
        out = {"tier1_logits": tier1, "tier2_logits": tier2, "distilled_features": distilled,
               "tier2_attention": a2, "instance_attention": inst_att, "groups": groups}
        if rows_idx:
            out["distilled_index"] = torch.cat(rows_idx)
        return out

    def forward(self, bag: Any, groups: Sequence[Sequence[int]] | None = None) -> Output:
        check_bag(bag, "dtfdmil")
        x = bag.features  # (N, D)
        n_patches = x.shape[0]
        sid = getattr(bag, "slide_id", "?")
        n_groups, total = ((self.num_group, self.total_instance) if self.training
                           else (self.num_group_test, self.total_instance_test))
        per_group = total // n_groups
        mid = self.dim_reduction(x)  # (N, m)
        raw = self.attention(mid)  # (N,) raw gated scores
        if groups is not None:
            splits = [self._check_groups(groups, n_patches, sid)]
        elif self.training:
            splits = [self.random_groups(n_patches, n_groups, self._generator)]
        else:
            gen = torch.Generator().manual_seed(self.seed)
            splits = [self.random_groups(n_patches, n_groups, gen) for _ in range(self.num_mean_inference)]
        runs = [self._one_split(mid, raw, g, per_group) for g in splits]
        first = runs[0]
        logits = first["tier2_logits"]
        extras = {k: v for k, v in first.items() if k not in ("tier2_logits", "instance_attention")}
        extras["raw_attention"] = raw
        if len(runs) > 1:  # official: mean of the tier-2 softmax over num_MeanInference splits
            mean_prob = torch.stack([torch.softmax(r["tier2_logits"], dim=1) for r in runs]).mean(0)
            extras["mean_prob"] = mean_prob
            logits = mean_prob.log()
        return Output(logits, attention=first["instance_attention"], extras=extras)

    def loss(self, output: Output, bag: Any) -> dict[str, torch.Tensor]:
        """Tier-1: mean CE over pseudo-bags (each labelled with the slide label); tier-2: CE."""
        y = bag_label(bag)
        tier1_logits = output.extras["tier1_logits"]
        tier1 = F.cross_entropy(tier1_logits, y.expand(tier1_logits.shape[0]))
        tier2 = F.cross_entropy(output.logits, y)
        return {"total": tier1 + tier2, "tier1": tier1, "tier2": tier2}


def build(in_dim: int, omics_dim: int | None, n_classes: int, **hp: Any) -> DTFDMIL:
    return DTFDMIL(in_dim, n_classes, **hp)


def from_official(state_dict: dict, in_chn: int | None = None, mDim: int = 512, num_cls: int | None = None,
                  droprate: float = 0.0, droprate_2: float = 0.0, numLayer_Res: int = 0,
                  numGroup: int = 4, total_instance: int = 4, distill_type: str = "AFS",
                  numGroup_test: int | None = None, total_instance_test: int | None = None,
                  num_MeanInference: int = 1, **_unused: Any) -> DTFDMIL:
    """Build from the official save dict ``{'classifier', 'dim_reduction', 'attention',
    'att_classifier'}``, nested or flattened to ``<part>.<key>``; argument names are
    Main_DTFD_MIL.py's argparse names (plus ``in_chn``, hard-coded 1024 there). Sizes are read from
    the weights; ``.module`` infixes (``isPar``/DataParallel) are stripped."""
    flat: dict[str, torch.Tensor] = {}
    for k, v in state_dict.items():
        if isinstance(v, dict):
            flat.update({f"{k}.{kk}": vv for kk, vv in v.items()})
        else:
            flat[k] = v
    flat = {k.replace(".module.", "."): v for k, v in flat.items()}
    w1 = flat["dim_reduction.fc1.weight"]  # (m, D)
    if in_chn is not None and w1.shape[1] != in_chn:
        raise ValueError(f"dtfdmil: in_chn={in_chn} but dim_reduction.fc1.weight has input dim {w1.shape[1]}")
    model = DTFDMIL(
        w1.shape[1], flat["classifier.fc.weight"].shape[0], m_dim=w1.shape[0],
        attn_dim=flat["attention.attention_V.0.weight"].shape[0],
        num_group=numGroup, total_instance=total_instance,
        num_group_test=numGroup if numGroup_test is None else numGroup_test,
        total_instance_test=total_instance if total_instance_test is None else total_instance_test,
        distill=distill_type, droprate=droprate, droprate_2=droprate_2, num_layer_res=numLayer_Res,
        num_mean_inference=num_MeanInference)
    if num_cls is not None and num_cls != model.n_classes:
        raise ValueError(f"dtfdmil: num_cls={num_cls} but classifier.fc.weight has {model.n_classes} rows")
    model.load_state_dict(flat, strict=True)
    return model


DTFD_REPO = "hrzhang1123/DTFD-MIL@10964f4"

# Main_DTFD_MIL.py argparse defaults (the README has no command).
RECIPE = Recipe(
    name="official", optimizer="adam", lr=1e-4, weight_decay=1e-4, epochs=200, scheduler="multistep",
    milestones=(100,), gamma=0.2, grad_clip=5.0, clip_per_group=True, monitor="val_auc", patience=None,
    select_after=0.8, balanced_sampling=False,
    sources={
        "optimizer": f"{DTFD_REPO} Main_DTFD_MIL.py:L99-105 (two Adams, tier 1 and tier 2: one Adam over both is "
                     "the same update, baselines/dtfdmil.py docstring)",
        "lr": f"{DTFD_REPO} Main_DTFD_MIL.py:L29 (1e-4)",
        "weight_decay": f"{DTFD_REPO} Main_DTFD_MIL.py:L30 (1e-4)",
        "epochs": f"{DTFD_REPO} Main_DTFD_MIL.py:L21 (EPOCH 200)",
        "scheduler": f"{DTFD_REPO} Main_DTFD_MIL.py:L22, L31, L107-108 (MultiStepLR([100], gamma 0.2)), stepped L147-148",
        "grad_clip": f"{DTFD_REPO} Main_DTFD_MIL.py:L44, L354-356, L364 (norm 5 per module)",
        "monitor": f"{DTFD_REPO} Main_DTFD_MIL.py:L131 (best tier-2 validation AUC)",
        "select_after": f"{DTFD_REPO} Main_DTFD_MIL.py:L131 (only when ii > int(EPOCH * 0.8))",
        "balanced_sampling": f"{DTFD_REPO} Main_DTFD_MIL.py:L290-291 (random.shuffle of the slides)",
        "loss": f"{DTFD_REPO} Main_DTFD_MIL.py:L75, L351, L361 (mean CE over pseudo-bags; CE of tier 2)",
        "seed": f"{DTFD_REPO} Main_DTFD_MIL.py:L52-55 (32)",
    },
    notes="The script also scores the test set every epoch and reports it at the best validation epoch; only the "
          "validation part is read here.")


SPEC = MethodSpec(
    "dtfdmil", family="mil", display="DTFD-MIL", job_cost=1.8, build=build, config=DTFDMILConfig,
    recipes={"wsi": RECIPE},
    search_space=("lr=1e-5:1e-3:log", "weight_decay=1e-6:1e-2:log", "droprate=0.0:0.5", "num_group=2,4,8"),
    scale_params={"small": {"m_dim": 128, "attn_dim": 32}},
    paper="Zhang et al., CVPR 2022",
    code="hrzhang1123/DTFD-MIL Model/Attention.py, Model/network.py, utils.py, Main_DTFD_MIL.py",
    description="double-tier feature distillation MIL over random pseudo-bags (AFS)")
