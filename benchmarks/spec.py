"""``MethodSpec``: everything the suite knows about one method, declared at the end of the
method's own module (``SPEC = MethodSpec(...)``) and found by :mod:`benchmarks.registry`.

Builders, configs and recipes may be given as ``"module:attr"`` strings, imported on first use.
This module imports nothing of the suite, so a method module (or a plugin package) can import it
without pulling in the runner.
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
    display: the name in tables and figures; tables order methods by family, then registration.
    scale_params: hyper-parameter overrides per simulated scale preset (``{"small": {...}}``: the
      64-d ``small`` cohort's narrower widths; ``tiny`` inherits ``small`` through the suite file);
      a suite file's ``[params_by_scale]`` entries apply on top.
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
    display: str = ""  # the name tables print (default: the registry key)
    scale_params: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # simulated scale -> widths

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


