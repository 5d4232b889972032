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

FAMILIES = ("floor", "mil", "kd", "ours")
NEEDS = ("coords", "omics_train")


def _resolve(ref: Any) -> Any:
    if isinstance(ref, str):
        mod, _, attr = ref.partition(":")
        return getattr(importlib.import_module(mod), attr)
    return ref


@dataclass(frozen=True)
class MethodSpec:
    """How to build one method and what it needs.

    name: registry key; family: ``floor`` (pooling without attention: the number to beat), ``mil``
      (slides only), ``kd`` (omics distillation) or ``ours``.
    config: a dataclass (or ``"module:Class"``) whose fields are the hyper-parameters with the
      paper/official defaults; ``build(in_dim, omics_dim, n_classes, **hp) -> nn.Module``.
    needs: subset of ``{"coords", "omics_train"}``.
    variants: name -> hyper-parameter overrides (``"default"`` is implicit and empty).
    recipes: recipe family -> the method's official training :class:`~momkd.recipe.Recipe` (or
      ``"module:attr"``): ``"wsi"`` (its own training script on slide cohorts, required) and
      optionally ``"classic_mil"`` (the recipe of its paper's MUSK/Elephant benchmark script).
      ``--recipe official`` trains with it; ``--recipe shared`` (default) with the protocol's.
    search_space: ``tune``'s default ranges (``name=low:high[:log]`` or ``name=a,b,c``).
    """

    name: str
    family: str
    build: Any
    config: Any
    needs: frozenset = frozenset()
    variants: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    recipes: Mapping[str, Any] = field(default_factory=dict)
    search_space: tuple[str, ...] = ()
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

    def recipe_table(self) -> dict[str, Any]:
        """Recipe family -> :class:`~momkd.recipe.Recipe` (references imported on first use)."""
        return {k: _resolve(v) for k, v in self.recipes.items()}

    def hparams(self, variant: str = "default", overrides: Mapping[str, Any] | None = None,
                base: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Defaults, then ``base`` (a recipe's settings), the variant's overrides, then user
        overrides (``None`` values dropped)."""
        if variant != "default" and variant not in self.variants:
            raise KeyError(_unknown(f"variant of {self.name}", variant, self.variant_names()))
        hp = self.defaults()
        for src in (base or {}, self.variants.get(variant, {}), overrides or {}):
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
    *(MethodSpec(
        f"{pool}pool", job_cost=0.3, family="floor", build=f"baselines.pooling:build_{pool}",
        config="baselines.pooling:PoolingConfig", recipes={"wsi": "baselines.pooling:RECIPE"},
        search_space=("lr=1e-5:1e-3:log", "weight_decay=1e-6:1e-2:log", "dropout=0.0:0.5", "hidden_dim=0,64,128,256"),
        paper=f"{pool} pooling (Wang et al., Pattern Recognition 2018, mi-Net; Ilse et al. 2018)",
        code=f"no official code: baselines/pooling.py (torchmil {pool.title()}PoolMIL's role)",
        description=f"floor: linear probe on the {'mean' if pool == 'mean' else 'element-wise max'} patch feature")
      for pool in ("mean", "max")),
    MethodSpec(
        "abmil", job_cost=1.5, family="mil", build="baselines.abmil:build", config="baselines.abmil:ABMILConfig",
        recipes={"wsi": "baselines.abmil:RECIPE", "classic_mil": "baselines.abmil:CLASSIC_MIL_RECIPE"},
        search_space=("lr=1e-5:1e-3:log", "weight_decay=1e-6:1e-2:log", "dropout=0.0:0.5", "attn_dim=64,128,256,384"),
        paper="Ilse et al., ICML 2018 (CLAM-style gated attention, Lu et al. 2021)",
        code="mahmoodlab/CLAM models/model_clam.py CLAM_SB without instance clustering",
        description="gated-attention MIL (CLAM_SB, no instance clustering)"),
    MethodSpec(
        "dsmil", job_cost=1.0, family="mil", build="baselines.dsmil:build", config="baselines.dsmil:DSMILConfig",
        recipes={"wsi": "baselines.dsmil:RECIPE", "classic_mil": "baselines.dsmil:CLASSIC_MIL_RECIPE"},
        search_space=("lr=1e-5:1e-3:log", "weight_decay=1e-6:1e-2:log", "dropout_patch=0.0:0.5", "passing_v=false,true"),
        paper="Li, Li & Eliceiri, CVPR 2021",
        code="binli123/dsmil-wsi dsmil.py MILNet(FCLayer, BClassifier), train_tcga.py",
        description="dual-stream MIL: max-instance + critical-instance attention (Conv1d bag head)"),
    MethodSpec(
        "transmil", job_cost=20.9, family="mil", build="baselines.transmil:build", config="baselines.transmil:TransMILConfig",
        recipes={"wsi": "baselines.transmil:RECIPE"},
        search_space=("lr=1e-5:1e-3:log", "weight_decay=1e-6:1e-2:log", "dropout=0.0:0.5", "num_landmarks=32,64,128,256"),
        paper="Shao et al., NeurIPS 2021",
        code="szc19990412/TransMIL models/TransMIL.py + nystrom-attention 0.0.14",
        description="Nystrom transformer MIL with PPEG position encoding and a cls token"),
    MethodSpec(
        "dtfdmil", job_cost=1.8, family="mil", build="baselines.dtfdmil:build", config="baselines.dtfdmil:DTFDMILConfig",
        recipes={"wsi": "baselines.dtfdmil:RECIPE"},
        search_space=("lr=1e-5:1e-3:log", "weight_decay=1e-6:1e-2:log", "droprate=0.0:0.5", "num_group=2,4,8"),
        paper="Zhang et al., CVPR 2022",
        code="hrzhang1123/DTFD-MIL Model/Attention.py, Model/network.py, utils.py, Main_DTFD_MIL.py",
        description="double-tier feature distillation MIL over random pseudo-bags (AFS)"),
    MethodSpec(
        "wikg", job_cost=3.0, family="mil", build="baselines.wikg:build", config="baselines.wikg:WiKGConfig",
        recipes={"wsi": "baselines.wikg:RECIPE"},
        search_space=("lr=1e-5:1e-3:log", "weight_decay=1e-6:1e-2:log", "dropout=0.0:0.5", "topk=4,6,8,12"),
        paper="Li et al., CVPR 2024",
        code="WonderLandxD/WiKG model.py, train.py",
        description="dynamic top-k graph with knowledge-aware attention (WiKG), mean readout"),
    MethodSpec(
        "tdc", job_cost=5.0, family="kd", build="baselines.tdc:build", config="baselines.tdc:TDCConfig",
        needs=frozenset({"omics_train"}),
        # default: ContrastLoss_v2 and the student term as the official code computes them; the
        # variant: the per-sample CRD loss and the intended student confidence
        variants={"per_sample": {"nce_form": "per_sample", "student_softmax_dim0": False}},
        recipes={"wsi": "baselines.tdc:RECIPE"},
        search_space=("lr=1e-5:1e-3:log", "weight_decay=1e-6:1e-2:log", "dropout=0.0:0.5", "temperature=1.0:8.0"),
        paper="TDCLoss of Xing et al. (MICCAI 2022 DC-Distill; MedIA 2024 CLAT) as shipped in the MKD code base; "
              "MoMKD's exact 'TDC' reference not found (acronym expansion uncertain)",
        code="zqb77/MICCAI25 utils/loss/CRD_criterion_v10.py, trainer/batch_kd_trainer.py; "
             "CityU-AIM-Group/MultiModal-learning MIA 2023/stage2_unimodal_student",
        description="offline KD from 3 frozen teachers: discrepancy-weighted CRD-NCE with memory bank + logit KD"),
    MethodSpec(
        "mkd", job_cost=4.7, family="kd", build="baselines.mkd:build", config="baselines.mkd:MKDConfig",
        needs=frozenset({"omics_train"}),
        recipes={"wsi": "baselines.mkd:RECIPE"},
        search_space=("lr=1e-5:1e-3:log", "weight_decay=1e-6:1e-2:log", "dropout=0.0:0.5", "temperature=1.0:8.0"),
        paper="Zhang et al., MICCAI 2025 (arXiv 2508.17213); journal version GMKDN (IEEE TMI)",
        code="zqb77/MICCAI25 models/online_kd.py, models/snnmil.py, trainer/online_kd_trainer.py",
        description="online KD: ABMIL student + multimodal and omics teachers, SP/KL/orthogonality/CORAL"),
    MethodSpec(
        "ghanet", job_cost=10.1, family="kd", build="baselines.ghanet:build", config="baselines.ghanet:GHANetConfig",
        needs=frozenset({"omics_train"}),
        recipes={"wsi": "baselines.ghanet:RECIPE"},
        search_space=("lr=1e-5:1e-3:log", "weight_decay=1e-6:1e-2:log", "dropout=0.0:0.5", "recon_weight=0.03:1.0:log"),
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
        recipes={"wsi": "momkd.config:RECIPE"},
        search_space=("lr=1e-5:1e-3:log", "weight_decay=1e-6:1e-2:log", "cls_dropout=0.0:0.7", "n_memory=4:64:log", "margin=0.05:0.6"),
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
    parser.add_argument("--recipes", action="store_true",
                        help="each method's official training recipes (run --recipe official)")
    parser.add_argument("--method", default=None, help="with --recipes: every field of one method's recipes "
                                                       "and the official file and line it comes from")


def main(args) -> int:
    """List registered methods, their family, what they need, and their variants (or their recipes)."""
    import json

    from tabulate import tabulate

    if getattr(args, "recipes", False):
        if args.method:
            spec = get(args.method)
            print(json.dumps({fam: r.to_dict() for fam, r in spec.recipe_table().items()}, indent=1, default=str))
            return 0
        rows = [{"method": s.name, "family": fam, "recipe": r.summary()}
                for s in METHODS.values() if args.family is None or s.family == args.family
                for fam, r in s.recipe_table().items()]
        print(tabulate(rows, headers="keys", tablefmt="github"))
        return 0
    rows = [r for r in describe() if args.family is None or r["family"] == args.family]
    print(tabulate(rows, headers="keys", tablefmt="github"))
    return 0
