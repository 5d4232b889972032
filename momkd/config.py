"""MoMKD hyper-parameters: one frozen dataclass, two presets (DESIGN.md "MoMKD").

Every number is a field. Fields whose value differs between the paper text and the released code
default to ``None`` and are taken from the chosen ``preset``:

* ``"official"``: the released code, CAIR-LAB-WFUSM/MoMKD @ 226ad63 (``run.sh``, ``main.py``,
  ``models/mkd.py``, ``utils/core_utils.py`` ``train_mkd``/``bootstrap_codebooks``,
  ``utils/Mkd_train_utils.py`` ``mkd_train_loop``). This is the registry default: it is the only
  fully specified version and the one the golden fixture checks.
* ``"paper"``: the numbers the paper states (seed article Eq. 1-5 and "Training Objective";
  research/kd_methods.md 1.3-1.4: D 256, D_N 128, lambda_mse 0.01, fixed attention temperature 0.2,
  K-means on 10,000 patches, nearest centroid on the unit sphere). Everything the paper does not
  state (heads, dropouts, memory size, regulariser weights, ...) falls back to the official value.

``resolve(cfg)`` returns a copy with every ``None`` replaced by the preset's value.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping

from momkd.recipe import Recipe

PRESETS: dict[str, dict[str, Any]] = {
    "official": {
        "hidden_dim": 512,  # run.sh WSI_ENCODER_DIM
        "proj_dim": 64,  # run.sh SHARED_EMBEDDING_DIM
        "n_memory": 16,  # run.sh memory_size
        "lambda_mse": 0.05,  # core_utils.train_mkd recon_weight
        "learnable_tau": True,  # mkd.py attn_log_tau = Parameter(log(0.2))
        "kmeans_samples": 50_000,  # core_utils.train_mkd: bootstrap_codebooks(max_per_class=50000)
        "commit_assign": "raw",  # vendored VQ: Euclidean cdist to the UN-normalised codebook
    },
    "paper": {
        "hidden_dim": 256,  # paper D (kd_methods.md 1.3 table)
        "proj_dim": 128,  # paper D_N
        "n_memory": 16,  # not stated in the paper: official run.sh value
        "lambda_mse": 0.01,  # paper Eq. 5
        "learnable_tau": False,  # paper: fixed temperature 0.2 (seed article, Eq. 4 text)
        "kmeans_samples": 10_000,  # paper: "10,000 patches are randomly sampled" (taken per class)
        "commit_assign": "normalized",  # paper: memory on the unit sphere, nearest centroid
    },
}

MEMORY_MODES = ("gradient", "ema", "fixed")
COMMIT_ASSIGN = ("raw", "normalized")
GAT_IMPLS = ("chunked", "pyg")


@dataclass(frozen=True)
class MoMKDConfig:
    """MoMKD settings. ``None`` = take the value of ``preset`` (see ``PRESETS``)."""

    preset: str = "official"

    # --- sizes ------------------------------------------------------------------------------
    hidden_dim: int | None = None  # D: GATv2 output / contextual feature width
    proj_dim: int | None = None  # S = D_N: unit-sphere projection width (Eq. 1)
    n_memory: int | None = None  # n: centroids per class bank
    gat_heads: int = 2  # mkd.py WsiEncoder(heads=2); concat, D/heads channels per head
    gat_layers: int = 2  # paper: "a two-layer GATv2"; mkd.py gat1, gat2
    gat_negative_slope: float = 0.2  # GATv2Conv default (mkd.py leaves it)
    knn_k: int = 8  # paper: eight nearest neighbours; graph.py / dataset_odx.py k=8
    omics_hidden: int = 512  # mkd.py RnaEncoder hidden_dim default
    omics_embed_dim: int = 512  # run.sh RNA_EMBEDDING_DIM
    cls_hidden: int = 128  # run.sh CLS_HIDDEN_DIM
    gated_attn_dim: int = 128  # wsi_only pooling (gated attention), our choice = cls_hidden

    # --- dropout (mkd.py) ---------------------------------------------------------------------
    gat_dropout: float = 0.5  # GATv2Conv attention dropout (WsiEncoder dropout=0.5)
    feat_dropout: float = 0.5  # F.dropout after each GATv2 block (same 0.5)
    omics_dropout: float = 0.25  # RnaEncoder / RnaDecoder Dropout(0.25)
    cls_dropout: float = 0.5  # wsi_classifier_proto Dropout(0.5)

    # --- memory-guided attention (Eq. 4) ------------------------------------------------------
    tau_attn: float = 0.2  # paper 0.2; mkd.py attn_tau_init 0.2
    learnable_tau: bool | None = None  # official: exp(log_tau) learnable; paper: fixed
    tau_min: float = 0.01  # mkd.py _attn_temp clamp
    tau_max: float = 2.0

    # --- alignment (Eq. 2-3) ------------------------------------------------------------------
    tau_agg: float = 5.0  # Eq. 2; Mkd_train_utils._agg tau=5
    margin: float = 0.3  # Eq. 3; train_mkd margin 0.3
    beta: float = 20.0  # Eq. 3; PrototypicalAlignmentLoss beta=20

    # --- loss weights (Eq. 5; train_mkd / mkd_train_loop) ---------------------------------------
    lambda_ce: float = 0.5  # paper and code
    lambda_mse: float | None = None  # paper 0.01, code recon_weight 0.05
    alpha_wsi: float = 0.2  # paper and code
    alpha_omics: float = 0.05  # paper and code (alpha_rna)
    lambda_mem: float = 0.1  # paper and code (alpha_mem, hard-coded)
    commit_weight: float = 1.0  # VectorQuantize commitment_weight default
    orth_weight: float = 10.0  # mkd.py VectorQuantize(orthogonal_reg_weight=10)
    commit_assign: str | None = None  # "raw": Euclidean to raw codebook (code); "normalized"

    # --- memory ---------------------------------------------------------------------------------
    use_memory: bool = True  # False: wsi_only (gated-attention pooling, CE only)
    use_omics: bool = True  # False: no omics branch (wsi_only)
    memory_mode: str = "gradient"  # "gradient" (released code), "ema" (extension), "fixed" (Table 4)
    ema_decay: float = 0.99  # ema mode: c <- normalize(m c + (1-m) mean); no published value
    warm_start: bool = True  # spherical K-means on patch projections before training
    kmeans_samples: int | None = None  # patches sampled per class for the warm start
    kmeans_iters: int = 20  # core_utils.bootstrap_codebooks kmeans_iters=20
    kmeans_seed: int = 0  # seeds the patch sample and the K-means initial centres

    # --- implementation (no effect on the maths) -------------------------------------------------
    gat_impl: str = "chunked"  # "chunked": memory-bounded GATv2; "pyg": GATv2Conv.forward
    gat_chunk_edges: int | None = None  # edges per block in the chunked GATv2; None: max(1024, 2**19 // hidden_dim)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "MoMKDConfig":
        """Build from a dict; unknown keys raise with the valid ones; ``None`` values are dropped."""
        names = {f.name for f in dataclasses.fields(cls)}
        bad = sorted(set(d) - names)
        if bad:
            raise KeyError(f"MoMKDConfig: unknown settings {bad}; valid: {sorted(names)}")
        return cls(**{k: v for k, v in d.items() if v is not None})


def resolve(cfg: MoMKDConfig) -> MoMKDConfig:
    """A copy of ``cfg`` with every preset-dependent ``None`` filled in, after validation."""
    if cfg.preset not in PRESETS:
        raise ValueError(f"MoMKD: unknown preset {cfg.preset!r}; choose one of {sorted(PRESETS)}")
    fill = {k: v for k, v in PRESETS[cfg.preset].items() if getattr(cfg, k) is None}
    out = dataclasses.replace(cfg, **fill)
    if out.memory_mode not in MEMORY_MODES:
        raise ValueError(f"MoMKD: memory_mode {out.memory_mode!r} not in {MEMORY_MODES}")
    if out.commit_assign not in COMMIT_ASSIGN:
        raise ValueError(f"MoMKD: commit_assign {out.commit_assign!r} not in {COMMIT_ASSIGN}")
    if out.gat_impl not in GAT_IMPLS:
        raise ValueError(f"MoMKD: gat_impl {out.gat_impl!r} not in {GAT_IMPLS}")
    if out.hidden_dim % out.gat_heads:
        raise ValueError(f"MoMKD: hidden_dim {out.hidden_dim} must be divisible by gat_heads {out.gat_heads}")
    if out.gat_layers < 1:
        raise ValueError("MoMKD: gat_layers must be >= 1")
    if not 0.0 <= out.ema_decay <= 1.0:
        raise ValueError(f"MoMKD: ema_decay {out.ema_decay} must lie in [0, 1]")
    if out.n_memory < 1 or out.kmeans_samples < 1:
        raise ValueError("MoMKD: n_memory and kmeans_samples must be >= 1")
    return out


MOMKD_REPO = "CAIR-LAB-WFUSM/MoMKD@226ad63"

# run.sh (its flags) + main.py + utils/core_utils.py train_mkd + utils/Mkd_train_utils.py.
RECIPE = Recipe(
    name="official", optimizer="adamw", lr=2e-4, weight_decay=1e-4, epochs=100, scheduler="plateau",
    plateau_factor=0.2, plateau_patience=5, grad_clip=16.0, monitor="val_auc", patience=1, min_epochs=3,
    balanced_sampling=True,
    sources={
        "optimizer": f"{MOMKD_REPO} utils/core_utils.py:L207-210 (AdamW, weight_decay 1e-4 hard-coded)",
        "lr": f"{MOMKD_REPO} run.sh:L30 (2e-4)", "weight_decay": f"{MOMKD_REPO} utils/core_utils.py:L207-210",
        "epochs": f"{MOMKD_REPO} run.sh:L23 (100)",
        "scheduler": f"{MOMKD_REPO} utils/core_utils.py:L215, L261 (ReduceLROnPlateau(max, 0.2, 5) on val AUC)",
        "grad_clip": f"{MOMKD_REPO} run.sh:L24 (--gc 16), utils/Mkd_train_utils.py:L118-120 (clip_grad_norm_ max-norm)",
        "monitor": f"{MOMKD_REPO} utils/core_utils.py:L22-59, L264-269 (val AUC)",
        "patience": f"{MOMKD_REPO} run.sh:L27-28 (patience 1, stop_epoch 1), utils/core_utils.py:L49 (epoch > stop_epoch)",
        "balanced_sampling": f"{MOMKD_REPO} utils/core_utils.py:L171-177 (WeightedRandomSampler, always)",
        "loss": f"{MOMKD_REPO} utils/Mkd_train_utils.py:L96, L110 (0.5 CE + 0.1 mem + 0.05 rna + 0.2 wsi + 0.05 recon)",
        "seed": f"{MOMKD_REPO} run.sh:L21 (4)",
    },
    notes="run.sh trains one fold (--k 1); every fold of the protocol is trained here. Validation is WSI-only, "
          "as the official forward_inference.")
