"""Which recipe a job trains with: ``shared`` (one protocol for every method) or ``official``
(each method's own, ``MethodSpec.recipes``; ``momkd/recipe.py`` defines the fields).

The shared recipe is built from the suite's protocol (AdamW, cosine schedule, gradient clipping,
early stopping on validation AUC): it is the fair comparison of the main tables. ``official``
takes the method's recipe for the suite's recipe family (``[suite] recipe_family``: ``"wsi"`` for
slide cohorts, ``"classic_mil"`` for MUSK/Elephant/UCSB, where a method may have the recipe of
its paper's benchmark script), falling back to its WSI recipe.
"""
from __future__ import annotations

import dataclasses
from typing import Any

from momkd.recipe import Recipe

RECIPES = ("shared", "official")
# recipe fields that `tune` searches and `run --params` sets, next to a method's hyper-parameters
TRAIN_PARAMS = ("lr", "weight_decay")


def split_train_params(params: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(model hyper-parameters, recipe overrides) of one method's parameter dict."""
    model = {k: v for k, v in params.items() if k not in TRAIN_PARAMS}
    train = {k: v for k, v in params.items() if k in TRAIN_PARAMS and v is not None}
    return model, train
FAMILIES = ("wsi", "classic_mil")


def shared_recipe(protocol: Any) -> Recipe:
    """The benchmark's one recipe for every method, from the protocol's training fields."""
    return Recipe(
        name="shared", optimizer="adamw", lr=protocol.lr, weight_decay=protocol.weight_decay,
        epochs=protocol.max_epochs, scheduler="cosine" if protocol.scheduler == "cosine" else "none",
        grad_clip=protocol.grad_clip or None, monitor="val_auc", patience=protocol.patience,
        min_epochs=protocol.min_epochs, balanced_sampling=protocol.balanced_sampling,
        notes="the benchmark's shared protocol (benchmarks/protocol.py): the same optimiser, schedule and "
              "early stopping for every method")


def official_recipe(spec: Any, family: str = "wsi") -> Recipe:
    """The method's own recipe for a recipe family (its WSI recipe when it has none for it)."""
    if family not in FAMILIES:
        raise ValueError(f"unknown recipe family {family!r}; choose from {FAMILIES}")
    recipes = spec.recipe_table()
    if "wsi" not in recipes:
        raise ValueError(f"method {spec.name} declares no official recipe")
    return recipes.get(family, recipes["wsi"])


def resolve(spec: Any, name: str, protocol: Any, suite: str | None = None, family: str = "wsi",
            max_epochs: int | None = None) -> Recipe:
    """The recipe a job of ``spec`` trains with. ``max_epochs`` (``--max-epochs``) caps either recipe."""
    if name == "shared":
        r = shared_recipe(protocol)
    elif name == "official":
        r = official_recipe(spec, family).for_suite(suite)
    else:
        raise ValueError(f"unknown recipe {name!r}; choose from {', '.join(RECIPES)}")
    if max_epochs is not None:
        if max_epochs < 1:
            raise ValueError(f"--max-epochs must be >= 1, got {max_epochs}")
        r = dataclasses.replace(r, epochs=min(r.epochs, max_epochs), min_epochs=min(r.min_epochs, max_epochs))
    return r
