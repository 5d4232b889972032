"""The method registry: the single way to add a method (DESIGN.md "MethodSpec", STYLE.md 3).

A method is one module that ends in its ``SPEC = MethodSpec(...)`` (or ``SPECS = (...)`` for a
family of methods, e.g. the pooling floor): model, defaults, recipes, variants, search space,
display name and per-scale widths together. The registry collects the built-in modules below, in
the order of the paper's Table 1, then every installed package that declares an entry point in the
``momkd_bench.methods`` group (``[project.entry-points."momkd_bench.methods"] name =
"package.module"``, or ``"package.module:SPEC"``), so a plugin adds a method without editing this
suite. ``python -m benchmarks check-method NAME`` checks a new method against the model contract.

    python -m benchmarks list      # methods, families, needs, variants
"""
from __future__ import annotations

import importlib
import sys
from importlib.metadata import entry_points
from typing import Any, Iterable

from benchmarks.spec import FAMILIES, NEEDS, MethodSpec, _resolve, _unknown  # noqa: F401 (re-exported)

BUILTIN_MODULES = ("baselines.pooling", "baselines.abmil", "baselines.dsmil", "baselines.transmil",
                   "baselines.dtfdmil", "baselines.wikg", "baselines.tdc", "baselines.mkd", "baselines.ghanet",
                   "momkd")
ENTRY_POINT_GROUP = "momkd_bench.methods"


def specs_of(obj: Any, where: str) -> list[MethodSpec]:
    """The specs a module (its ``SPEC`` / ``SPECS``) or an entry point's object declares."""
    if isinstance(obj, MethodSpec):
        return [obj]
    if isinstance(obj, (list, tuple)) and all(isinstance(x, MethodSpec) for x in obj):
        return list(obj)
    found = [getattr(obj, "SPEC", None)] + list(getattr(obj, "SPECS", ()) or ())
    found = [x for x in found if x is not None]
    if not found or not all(isinstance(x, MethodSpec) for x in found):
        raise TypeError(f"{where}: declares no MethodSpec (a method module ends in SPEC = MethodSpec(...) "
                        "or SPECS = (...))")
    return found


def _table(specs: Iterable[MethodSpec]) -> dict[str, MethodSpec]:
    out: dict[str, MethodSpec] = {}
    for s in specs:
        if s.name in out:
            raise ValueError(f"duplicate method name {s.name!r} in the registry")
        out[s.name] = s
    return out


def discover() -> dict[str, MethodSpec]:
    """Built-in methods, then plugins. A plugin that fails to load is reported and left out; a
    plugin that reuses a registered name is an error (it would silently replace a method)."""
    specs = [s for mod in BUILTIN_MODULES for s in specs_of(importlib.import_module(mod), mod)]
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            specs += specs_of(ep.load(), f"entry point {ep.name} = {ep.value}")
        except Exception as e:  # noqa: BLE001 - a broken plugin must not break the built-in methods
            print(f"warning: method plugin {ep.name} ({ep.value}) was not loaded: {type(e).__name__}: {e}",
                  file=sys.stderr)
    return _table(specs)


METHODS: dict[str, MethodSpec] = discover()


def get(name: str) -> MethodSpec:
    """The spec for ``name``; unknown names raise with the known names and the closest match."""
    try:
        return METHODS[name]
    except KeyError:
        raise KeyError(_unknown("method", name, list(METHODS))) from None


def names(family: str | None = None) -> list[str]:
    return [n for n, s in METHODS.items() if family is None or s.family == family]


def display_name(name: str) -> str:
    """The name tables print: the spec's ``display``, else the key (also for unregistered keys)."""
    s = METHODS.get(name)
    return (s.display or s.name) if s is not None else name


def scale_params(scale: str) -> dict[str, dict[str, Any]]:
    """Every registered method's widths for a simulated scale preset (``MethodSpec.scale_params``)."""
    return {n: dict(s.scale_params[scale]) for n, s in METHODS.items() if scale in s.scale_params}


def describe() -> list[dict[str, Any]]:
    """One row per method for ``benchmarks list``."""
    return [{"method": s.name, "display": s.display or s.name, "family": s.family,
             "needs": ",".join(sorted(s.needs)) or "-",
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
