"""The method registry: the single way to add a method (DESIGN.md "MethodSpec", STYLE.md 3).

One ``MethodSpec`` entry per method, in ``METHODS`` below. Builders and configs are named as
``"module:attr"`` strings and imported on first use, so ``python -m benchmarks list`` stays fast
and a broken optional method cannot break the others.

    python -m benchmarks list      # methods, families, needs, variants
"""
from __future__ import annotations

import dataclasses
import difflib
import importlib
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

FAMILIES = ("mil", "kd", "ours")
NEEDS = ("coords", "omics_train")


def _resolve(ref: Any) -> Any:
    if isinstance(ref, str):
        mod, _, attr = ref.partition(":")
        return getattr(importlib.import_module(mod), attr)
    return ref


@dataclass(frozen=True)
class MethodSpec:
    """How to build one method and what it needs.

    name: registry key; family: ``mil`` (slides only), ``kd`` (omics distillation) or ``ours``.
    config: a dataclass (or ``"module:Class"``) whose fields are the hyper-parameters with the
      paper/official defaults; ``build(in_dim, omics_dim, n_classes, **hp) -> nn.Module``.
    needs: subset of ``{"coords", "omics_train"}``.
    variants: name -> hyper-parameter overrides (``"default"`` is implicit and empty).
    train: the official optimisation defaults (lr, weight_decay, epochs, ...), recorded for
      reference; the shared protocol may override them for fairness (``train_notes`` says how).
    """

    name: str
    family: str
    build: Any
    config: Any
    needs: frozenset = frozenset()
    variants: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    train: Mapping[str, Any] = field(default_factory=dict)
    train_notes: str = ""
    paper: str = ""
    code: str = ""
    description: str = ""
    job_cost: float = 1.0  # rough relative cost of one job (scheduling only: expensive jobs start first)

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"method {self.name}: family {self.family!r} not in {FAMILIES}")
        bad = set(self.needs) - set(NEEDS)
        if bad:
            raise ValueError(f"method {self.name}: unknown needs {sorted(bad)}; known: {NEEDS}")

    # -- hyper-parameters ------------------------------------------------------------------
    def config_class(self) -> type:
        return _resolve(self.config)

    def defaults(self) -> dict[str, Any]:
        return dataclasses.asdict(self.config_class()())

    def variant_names(self) -> list[str]:
        names = list(self.variants)
        return names if "default" in names else ["default", *names]

    def hparams(self, variant: str = "default", overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Defaults, then the variant's overrides, then user overrides (``None`` values dropped)."""
        if variant != "default" and variant not in self.variants:
            raise KeyError(_unknown(f"variant of {self.name}", variant, self.variant_names()))
        hp = self.defaults()
        for src in (self.variants.get(variant, {}), overrides or {}):
            for k, v in src.items():
                if v is None:
                    continue
                if k not in hp:
                    raise KeyError(f"method {self.name}: unknown hyper-parameter {k!r}; "
                                   f"valid: {sorted(hp)}")
                hp[k] = v
        return hp

    def create(self, in_dim: int, omics_dim: int | None, n_classes: int, variant: str = "default",
               **overrides: Any):
        """Build the model for a variant with optional hyper-parameter overrides."""
        return self.build_model(in_dim, omics_dim, n_classes, self.hparams(variant, overrides))

    def build_model(self, in_dim: int, omics_dim: int | None, n_classes: int, hparams: Mapping[str, Any]):
        """Build from fully resolved hyper-parameters (as stored in a job)."""
        build: Callable = _resolve(self.build)
        return build(in_dim=in_dim, omics_dim=omics_dim, n_classes=n_classes, **dict(hparams))


def _unknown(what: str, name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return f"unknown {what} {name!r}; known: {', '.join(known)}.{hint}"


def _table(*specs: MethodSpec) -> dict[str, MethodSpec]:
    out: dict[str, MethodSpec] = {}
    for s in specs:
        if s.name in out:
            raise ValueError(f"duplicate method name {s.name!r} in the registry")
        out[s.name] = s
    return out


# ------------------------------------------------------------------------------------------
# The registry. One entry per method; keep the order of the paper's Table 1.
# ------------------------------------------------------------------------------------------
METHODS: dict[str, MethodSpec] = _table(
    MethodSpec(
        "abmil", job_cost=1.5, family="mil", build="baselines.abmil:build", config="baselines.abmil:ABMILConfig",
        train={"optimizer": "adam", "lr": 2e-4, "weight_decay": 1e-5, "epochs": 200,
               "early_stopping": "val loss, patience 20 after epoch 50"},
        train_notes="CLAM main.py defaults; the shared protocol uses AdamW/cosine for every method.",
        paper="Ilse et al., ICML 2018 (CLAM-style gated attention, Lu et al. 2021)",
        code="mahmoodlab/CLAM models/model_clam.py CLAM_SB without instance clustering",
        description="gated-attention MIL (CLAM_SB, no instance clustering)"),
    MethodSpec(
        "dsmil", job_cost=1.0, family="mil", build="baselines.dsmil:build", config="baselines.dsmil:DSMILConfig",
        train={"optimizer": "adam", "betas": (0.5, 0.9), "lr": 1e-4, "weight_decay": 1e-3,
               "scheduler": "cosine per epoch, T_max=epochs, eta_min 5e-6", "epochs": 50,
               "early_stopping": "stop after 10 epochs without a better (mean AUC + accuracy)/2",
               "loss": "0.5 BCEWithLogits(bag) + 0.5 BCEWithLogits(max instance), one-hot targets",
               "init": "orthogonal weights, zero biases", "batch_size": 1},
        train_notes="binli123/dsmil-wsi train_tcga.py defaults (the 2023 script used lr 2e-4, wd 5e-3, "
                    "200 epochs). Kept: the loss and the orthogonal init (in the model). The shared protocol "
                    "replaces Adam(betas 0.5, 0.9)/cosine-to-5e-6/50 epochs with its AdamW/cosine schedule, "
                    "and the official model choice on the evaluated fold (its 5-fold-cv scheme) with early "
                    "stopping on the validation part; patch dropout stays at the official 0.",
        paper="Li, Li & Eliceiri, CVPR 2021",
        code="binli123/dsmil-wsi dsmil.py MILNet(FCLayer, BClassifier), train_tcga.py",
        description="dual-stream MIL: max-instance + critical-instance attention (Conv1d bag head)"),
    MethodSpec(
        "transmil", job_cost=20.9, family="mil", build="baselines.transmil:build", config="baselines.transmil:TransMILConfig",
        train={"optimizer": "lookahead_radam (Lookahead alpha 0.5, k 6 over RAdam)", "lr": 2e-4,
               "weight_decay": 1e-5, "weight_decay_on": "params with ndim > 1, not biases", "epochs": 200,
               "early_stopping": "val loss, patience 10; checkpoint = best val loss",
               "loss": "cross-entropy", "precision": 16, "grad_accumulation": 2, "batch_size": 1,
               "seed": 2021, "instance_shuffle": False},
        train_notes="szc19990412/TransMIL Camelyon/TransMIL.yaml + MyOptimizer (timm-style factory). The "
                    "shared protocol replaces Lookahead(RAdam) and its weight-decay mask with its AdamW/cosine "
                    "schedule, trains in fp32 (bf16 autocast on GPU) with one slide per optimizer step instead of "
                    "fp16 with 2-step accumulation, and early-stops on validation AUC; the CE loss, "
                    "stored instance order and dropout 0.1 are kept. nystrom-attention 0.0.14 (the repo "
                    "pins 0.0.9, whose padding-slice bug moves logits by ~0.05-0.1).",
        paper="Shao et al., NeurIPS 2021",
        code="szc19990412/TransMIL models/TransMIL.py + nystrom-attention 0.0.14",
        description="Nystrom transformer MIL with PPEG position encoding and a cls token"),
    MethodSpec(
        "dtfdmil", job_cost=1.8, family="mil", build="baselines.dtfdmil:build", config="baselines.dtfdmil:DTFDMILConfig",
        train={"optimizer": "adam x2 (tier 1: dim_reduction+attention+classifier; tier 2: att_classifier)",
               "lr": 1e-4, "weight_decay": 1e-4, "epochs": 200,
               "scheduler": "MultiStepLR milestones [100], gamma 0.2 (both optimizers)",
               "grad_clip": 5.0, "grad_clip_per": "dim_reduction, attention, classifier, att_classifier "
                                                   "(each clipped to norm 5 separately)",
               "loss": "mean CE over pseudo-bags (tier 1) + CE (tier 2), one backward each",
               "model_selection": "best validation tier-2 AUC, only after epoch 0.8 x EPOCH (160)",
               "batch_size": 1, "seed": 32},
        train_notes="hrzhang1123/DTFD-MIL Main_DTFD_MIL.py argparse defaults. Its two-optimizer step (retain_graph; "
                    "fails on current PyTorch for AFS) is replaced by one backward of tier1 + tier2 with the "
                    "distilled features detached, the same update (see baselines/dtfdmil.py). The shared "
                    "protocol replaces the two Adams/MultiStepLR/200 epochs with its single AdamW/cosine "
                    "schedule, clips the global norm at its own value instead of norm 5 per module "
                    "(DTFDMIL.grad_clip_groups() lists the official groups), and early-stops on validation "
                    "AUC instead of the late-epoch selection; the pseudo-bag split (4 groups, AFS) is kept.",
        paper="Zhang et al., CVPR 2022",
        code="hrzhang1123/DTFD-MIL Model/Attention.py, Model/network.py, utils.py, Main_DTFD_MIL.py",
        description="double-tier feature distillation MIL over random pseudo-bags (AFS)"),
    MethodSpec(
        "wikg", job_cost=3.0, family="mil", build="baselines.wikg:build", config="baselines.wikg:WiKGConfig",
        train={"optimizer": "adam", "lr": 1e-4, "weight_decay": 1e-5, "epochs": 100, "scheduler": None,
               "grad_clip": None, "loss": "cross-entropy", "batch_size": 1, "seed": 2023,
               "model_selection": "best validation acc / AUC / F1 / kappa / specificity, one checkpoint each"},
        train_notes="WonderLandxD/WiKG train.py (WiKG(dim_hidden=512, topk=6, agg_type='bi-interaction', "
                    "dropout=0.3, pool='mean')). The shared protocol replaces Adam/100 epochs with its "
                    "AdamW/cosine schedule and gradient clipping, and picks the checkpoint by validation AUC "
                    "with early stopping; the top-k neighbour search is chunked (same outputs, no N x N matrix).",
        paper="Li et al., CVPR 2024",
        code="WonderLandxD/WiKG model.py, train.py",
        description="dynamic top-k graph with knowledge-aware attention (WiKG), mean readout"),
    MethodSpec(
        "tdc", job_cost=5.0, family="kd", build="baselines.tdc:build", config="baselines.tdc:TDCConfig",
        needs=frozenset({"omics_train"}),
        train={"optimizer": "adamw", "lr": 2e-4, "weight_decay": 1e-5, "scheduler": "cosine T_max 50 per epoch",
               "epochs": 100, "early_stopping": "val AUC, patience 5, stop_epoch 5", "grad_accumulation": 16,
               "batch_size": 1, "weighted_sample": True,
               "teachers": "train_tea.py: AdamW lr 1e-4, wd 1e-5, gc 16, 100 epochs, val-AUC early stopping, "
                           "each teacher trained and early-stopped separately",
               "loss": "per slide CE/gc; every gc slides sum over 3 teachers of TDCLoss (discrepancy-weighted "
                       "NCE, memory momentum 0.5, T 0.07, 4 negatives, 1 neighbour positive) + DistillKL(T=4)"},
        train_notes="zqb77/MICCAI25 trainer/batch_kd_trainer.py + utils/loss/CRD_criterion_v10.py (TDCLoss); the "
                    "script that set its options is missing, defaults from utils/opt.py's surviving .pyc. Stages: "
                    "'teachers' (3 teachers, CE; early-stopped on the slide teacher's val AUC because validation "
                    "bags carry no omics, or teacher_epochs fixed) then 'student'. The 16-slide window lives in "
                    "the model (earlier slides re-run so the window terms reach all 16); the shared protocol "
                    "replaces the official optimiser/schedule and steps once per slide.",
        paper="TDCLoss of Xing et al. (MICCAI 2022 DC-Distill; MedIA 2024 CLAT) as shipped in the MKD code base; "
              "MoMKD's exact 'TDC' reference not found (acronym expansion uncertain)",
        code="zqb77/MICCAI25 utils/loss/CRD_criterion_v10.py, trainer/batch_kd_trainer.py; "
             "CityU-AIM-Group/MultiModal-learning MIA 2023/stage2_unimodal_student",
        description="offline KD from 3 frozen teachers: discrepancy-weighted CRD-NCE with memory bank + logit KD"),
    MethodSpec(
        "mkd", job_cost=4.7, family="kd", build="baselines.mkd:build", config="baselines.mkd:MKDConfig",
        needs=frozenset({"omics_train"}),
        train={"optimizer": "adamw", "lr": 2e-4, "weight_decay": 1e-5, "scheduler": "cosine T_max 50 per epoch",
               "epochs": 100, "early_stopping": "mean val AUC of student + 2 teachers, patience 5, stop_epoch 5",
               "grad_accumulation": 16, "batch_size": 1, "weighted_sample": True, "checkpoint": "student at best",
               "loss": "per slide (CE_s + CE_mm + CE_g)/gc; every gc slides SP*B + mutual KL(T=4) + "
                       "orthogonality + CORAL, weights 1"},
        train_notes="zqb77/MICCAI25 train_kd.py + utils/core_utils_train.py + trainer/online_kd_trainer.py. Online: "
                    "student and both teachers in one optimiser. The 16-slide window lives in the model (earlier "
                    "slides re-run so the window terms reach all 16, CE/16 as officially); early stopping on the "
                    "student's validation AUC only (validation bags carry no omics); the shared protocol replaces "
                    "the official optimiser/schedule and steps once per slide.",
        paper="Zhang et al., MICCAI 2025 (arXiv 2508.17213); journal version GMKDN (IEEE TMI)",
        code="zqb77/MICCAI25 models/online_kd.py, models/snnmil.py, trainer/online_kd_trainer.py",
        description="online KD: ABMIL student + multimodal and omics teachers, SP/KL/orthogonality/CORAL"),
    MethodSpec(
        "ghanet", job_cost=10.1, family="kd", build="baselines.ghanet:build", config="baselines.ghanet:GHANetConfig",
        needs=frozenset({"omics_train"}),
        train={"optimizer": "adam", "lr": 2e-4, "weight_decay": 1e-5, "scheduler": "StepLR(30, 0.1)",
               "epochs": 20, "grad_accumulation": 32, "batch_size": 1, "weighted_sample": True,
               "early_stopping": "none; checkpoint = best c-index on the evaluated fold (README: last model)",
               "loss": "NLL survival (alpha 0) + 0.3 * sum_groups (cosine-cubed + MSE) reconstruction"},
        train_notes="ZacharyWang-007/G-HANet main.py + utils/core_utils.py + utils/coattn_train_utils.py. Adapted to "
                    "classification: Linear(6*256, C) + cross-entropy, Welch t-test between classes on the fold's "
                    "training bags (on_fit_start), 6 contiguous gene groups. The shared protocol replaces Adam/"
                    "StepLR/accumulation with its AdamW/cosine per-slide steps and early-stops on the validation "
                    "part (never on the test fold).",
        paper="Wang et al., IEEE TMI 2025 (arXiv 2403.10040), survival model adapted to classification",
        code="ZacharyWang-007/G-HANet models/model_coattn.py, models/model_reconstruction.py, "
             "models/hyper_attention_module.py",
        description="genomic tokens reconstruct omics from patches (CAB) + hyper-attention branch; slides only at test"),
    MethodSpec(
        "momkd", job_cost=7.2, family="ours", build="momkd:build", config="momkd:MoMKDConfig",
        needs=frozenset({"coords", "omics_train"}),
        variants={
            "full": {},
            "wsi_only": {"use_memory": False, "use_omics": False},  # Table 3 baseline: CE only, gated pooling
            "no_omics_align": {"alpha_omics": 0.0},  # Table 3
            "no_wsi_align": {"alpha_wsi": 0.0},  # Table 3
            "no_recon": {"lambda_mse": 0.0},  # Table 3
            "fixed_memory": {"memory_mode": "fixed"},  # Table 4: K-means initialised, then frozen
            "ema_memory": {"memory_mode": "ema"},  # extension: true momentum (EMA) update, not in the code
        },
        train={"optimizer": "adamw", "lr": 2e-4, "weight_decay": 1e-4, "grad_clip": 16.0,
               "scheduler": "ReduceLROnPlateau(mode='max', factor 0.2, patience 5) on val AUC",
               "epochs": 100, "early_stopping": "val AUC, patience 1, stop_epoch 1 (run.sh)",
               "batch_size": 1, "weighted_sample": True, "seed": 4, "folds_in_run_sh": 1,
               "warm_start": "spherical K-means, >= 50,000 patches per class, 20 iterations, untrained encoder",
               "loss": "0.5 CE + 0.1 mem + 0.05 align_omics + 0.2 align_wsi + 0.05 recon"},
        train_notes="CAIR-LAB-WFUSM/MoMKD run.sh + main.py + utils/core_utils.py train_mkd (gc=16 is the "
                    "clip_grad_norm max-norm, not accumulation). Registry default preset 'official' (run.sh sizes: "
                    "D 512, d_proj 64, 16 per class, recon 0.05, learnable temperature); preset='paper' gives the "
                    "paper's D 256, d_proj 128, recon 0.01, fixed temperature 0.2, 10,000 K-means patches. Memory "
                    "modes: gradient (released code), fixed (Table 4), ema (our extension). The shared protocol "
                    "replaces AdamW/ReduceLROnPlateau/patience 1 with its own schedule and early stopping; the "
                    "memory warm start runs in on_fit_start on the training part of each fold.",
        paper="Guo et al., Momentum Memory for Knowledge Distillation in Computational Pathology, CVPR 2026 "
              "(arXiv 2602.21395)",
        code="CAIR-LAB-WFUSM/MoMKD models/mkd.py, utils/Mkd_train_utils.py, utils/core_utils.py, run.sh",
        description="ours: GATv2 WSI encoder + class-conditioned memory aligned with omics, memory-guided attention"),
)


def get(name: str) -> MethodSpec:
    """The spec for ``name``; unknown names raise with the known names and the closest match."""
    try:
        return METHODS[name]
    except KeyError:
        raise KeyError(_unknown("method", name, list(METHODS))) from None


def names(family: str | None = None) -> list[str]:
    return [n for n, s in METHODS.items() if family is None or s.family == family]


def describe() -> list[dict[str, Any]]:
    """One row per method for ``benchmarks list``."""
    return [{"method": s.name, "family": s.family, "needs": ",".join(sorted(s.needs)) or "-",
             "variants": ",".join(s.variant_names()), "description": s.description} for s in METHODS.values()]


def add_arguments(parser) -> None:
    parser.add_argument("--family", choices=FAMILIES, default=None, help="only this family")


def main(args) -> int:
    """List registered methods, their family, what they need, and their variants."""
    from tabulate import tabulate

    rows = [r for r in describe() if args.family is None or r["family"] == args.family]
    print(tabulate(rows, headers="keys", tablefmt="github"))
    return 0
