"""Shared test fixtures: the golden folder, tiny bags, seeded RNG."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]

# Tests use tiny tensors: one intra-op thread is fastest and immune to OpenMP spin-waiting when
# other processes share the cores (two threads were ~30x slower on a loaded 2-core machine).
torch.set_num_threads(1)
os.environ.setdefault("OMP_NUM_THREADS", "1")
# `run` logs to MLflow at its end: tests use one throw-away store, not results/mlflow.db.
os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{tempfile.mkdtemp(prefix='mlflow_tests_')}/mlflow.db")


def golden_dir() -> Path:
    """``MOMKD_GOLDEN_DIR`` or ``../shared/golden``. Missing folder: skip locally, FAIL under CI."""
    d = Path(os.environ.get("MOMKD_GOLDEN_DIR", REPO.parent / "shared" / "golden"))
    if not d.is_dir():
        msg = f"golden fixtures not found at {d} (set MOMKD_GOLDEN_DIR)"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    return d


def load_golden(name: str) -> dict:
    path = golden_dir() / name
    if not path.exists():
        pytest.fail(f"golden fixture {path} missing")
    return torch.load(path, weights_only=True)


def golden_cases(fx: dict) -> list[tuple[dict, dict]]:
    """[(inputs, expected)] for the main case and every ``more_cases`` entry, inputs in float64."""
    def f64(d):
        return {k: (v.double() if torch.is_tensor(v) and v.is_floating_point() else v) for k, v in d.items()}
    cases = [(fx["inputs"], fx["expected"])] + [(c["inputs"], c["expected"]) for c in fx.get("more_cases", [])]
    return [(f64(i), e) for i, e in cases]


def assert_close(actual: torch.Tensor, expected: torch.Tensor, name: str = "") -> None:
    """The golden tolerance: float64, atol 1e-6, rtol 1e-5 (shared/golden/README.md)."""
    a = actual.detach().double().reshape(expected.shape)
    diff = (a - expected).abs().max().item() if a.numel() else 0.0
    assert torch.allclose(a, expected, atol=1e-6, rtol=1e-5), f"{name}: max |diff| = {diff:.3e}"


def make_bag(n: int = 20, d: int = 16, label: int | None = 1, omics_dim: int | None = None,
             seed: int = 0, coords: bool = True, slide_id: str = "s0"):
    """A tiny bag as a plain namespace (the models need no data layer)."""
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(n, d, generator=g)
    xy = torch.stack(torch.meshgrid(torch.arange(5), torch.arange((n + 4) // 5), indexing="ij"), -1)
    xy = xy.reshape(-1, 2)[:n].float() + 0.01 * torch.rand(n, 2, generator=g)
    from momkd.graph import knn_edge_index
    return SimpleNamespace(
        slide_id=slide_id, case_id=slide_id, features=feats, coords=xy if coords else None,
        edge_index=knn_edge_index(xy, 8) if coords else None,
        omics=None if omics_dim is None else torch.randn(omics_dim, generator=g), label=label)


@pytest.fixture
def tiny_bag():
    return make_bag()
