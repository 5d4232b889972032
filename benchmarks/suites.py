"""Suite definitions: ``data_manifests/<suite>.toml`` (tasks, labels, paper counts, protocol)."""
from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.protocol import ProtocolConfig

SUITE_DIR = Path(__file__).resolve().parents[1] / "data_manifests"


@dataclass(frozen=True)
class TaskSpec:
    name: str
    column: str
    display: str
    labels: dict[str, int]
    paper_counts: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Suite:
    name: str
    description: str
    tasks: dict[str, TaskSpec]
    protocol: ProtocolConfig
    raw: dict[str, Any]

    @property
    def recipe_family(self) -> str:
        """Which official recipe a method uses on this suite (benchmarks/recipes.py): ``wsi`` or ``classic_mil``."""
        return self.raw.get("suite", {}).get("recipe_family", "wsi")

    @property
    def external_task(self) -> str | None:
        return self.raw.get("suite", {}).get("external_task")

    def protocol_for_scale(self, scale: str | None, overrides: dict[str, Any] | None = None) -> ProtocolConfig:
        d = self.protocol.to_dict()
        d.update(self.raw.get("protocol_by_scale", {}).get(scale or "", {}))
        d.update({k: v for k, v in (overrides or {}).items() if v is not None})
        return ProtocolConfig.from_dict(d)

    def params_for_scale(self, scale: str | None) -> dict[str, dict[str, Any]]:
        """Per-method hyper-parameter overrides of a simulated scale preset: each method's own
        ``MethodSpec.scale_params[scale]``, then the suite file's ``[params_by_scale.<scale>.<method>]``
        on top (``inherit = "small"`` takes the parent preset's first). Empty on real data."""
        if not scale:
            return {}
        from benchmarks import registry

        by_scale = self.raw.get("params_by_scale", {})
        table = dict(by_scale.get(scale, {}))
        parent = table.pop("inherit", None)  # e.g. tiny: inherit = "small"
        out: dict[str, dict[str, Any]] = {}
        for level, file_table in (((parent, by_scale.get(parent, {})),) if parent else ()) + ((scale, table),):
            for source in (registry.scale_params(level), file_table):
                for m, hp in source.items():
                    if m != "inherit":
                        out[m] = {**out.get(m, {}), **hp}
        return out

    def label_maps(self) -> dict[str, dict[str, int]]:
        return {t.column: t.labels for t in self.tasks.values()}


def suite_path(name_or_path: str) -> Path:
    p = Path(name_or_path)
    if p.suffix == ".toml" and p.exists():
        return p
    cand = SUITE_DIR / f"{name_or_path}.toml"
    if not cand.exists():
        known = sorted(x.stem for x in SUITE_DIR.glob("*.toml") if x.stem != "literature_protocols")
        raise FileNotFoundError(f"unknown suite {name_or_path!r}; known suites: {', '.join(known)} "
                                f"(files in {SUITE_DIR})")
    return cand


def load_suite(name_or_path: str) -> Suite:
    path = suite_path(name_or_path)
    raw = tomllib.loads(path.read_text())
    tasks = {}
    for name, t in raw.get("tasks", {}).items():
        tasks[name] = TaskSpec(name=name, column=t.get("column", name), display=t.get("display", name.upper()),
                               labels={str(k).lower(): int(v) for k, v in t.get("labels", {}).items()},
                               paper_counts=dict(t.get("paper_counts", {})))
    s = raw.get("suite", {})
    return Suite(name=s.get("name", path.stem), description=s.get("description", ""), tasks=tasks,
                 protocol=ProtocolConfig.from_dict(raw.get("protocol")), raw=raw)
