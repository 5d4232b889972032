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
        "abmil", family="mil", build="baselines.abmil:build", config="baselines.abmil:ABMILConfig",
        train={"optimizer": "adam", "lr": 2e-4, "weight_decay": 1e-5, "epochs": 200,
               "early_stopping": "val loss, patience 20 after epoch 50"},
        train_notes="CLAM main.py defaults; the shared protocol uses AdamW/cosine for every method.",
        paper="Ilse et al., ICML 2018 (CLAM-style gated attention, Lu et al. 2021)",
        code="mahmoodlab/CLAM models/model_clam.py CLAM_SB without instance clustering",
        description="gated-attention MIL (CLAM_SB, no instance clustering)"),
    MethodSpec(
        "dsmil", family="mil", build="baselines.dsmil:build", config="baselines.dsmil:DSMILConfig",
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
        "transmil", family="mil", build="baselines.transmil:build", config="baselines.transmil:TransMILConfig",
        train={"optimizer": "lookahead_radam (Lookahead alpha 0.5, k 6 over RAdam)", "lr": 2e-4,
               "weight_decay": 1e-5, "weight_decay_on": "params with ndim > 1, not biases", "epochs": 200,
               "early_stopping": "val loss, patience 10; checkpoint = best val loss",
               "loss": "cross-entropy", "precision": 16, "grad_accumulation": 2, "batch_size": 1,
               "seed": 2021, "instance_shuffle": False},
        train_notes="szc19990412/TransMIL Camelyon/TransMIL.yaml + MyOptimizer (timm-style factory). The "
                    "shared protocol replaces Lookahead(RAdam) with AdamW/cosine (decay on all parameters), "
                    "trains in fp32 (bf16 autocast on GPU) with one slide per optimizer step instead of "
                    "fp16 with 2-step accumulation, and early-stops on validation AUC; the CE loss, "
                    "stored instance order and dropout 0.1 are kept. nystrom-attention 0.0.14 (the repo "
                    "pins 0.0.9, whose padding-slice bug moves logits by ~0.05-0.1).",
        paper="Shao et al., NeurIPS 2021",
        code="szc19990412/TransMIL models/TransMIL.py + nystrom-attention 0.0.14",
        description="Nystrom transformer MIL with PPEG position encoding and a cls token"),
    # <dtfdmil>
    # <wikg>
    # <tdc>
    # <mkd>
    # <ghanet>
    # <momkd>
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
