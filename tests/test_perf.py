"""Speed cases for pytest-benchmark (marker ``perf``, deselected by default and in CI):

    python -m pytest -m perf --benchmark-enable tests/test_perf.py

The same training step as ``python -m benchmarks perf`` (benchmarks/perf.py ``make_case``), at 1k
patches of 1,536-d features with the official widths and at the simulated ``small`` scale with its
width preset. Targets and the measured table live in benchmarks/perf.py and the closing notes; these
cases only time, they assert that a step actually trains (the loss is finite and parameters move).
"""
from __future__ import annotations

import pytest
import torch

from benchmarks import registry
from benchmarks.perf import make_case
from benchmarks.suites import load_suite

pytestmark = pytest.mark.perf

SMALL = load_suite("tcga_brca").params_for_scale("small")


def _params_moved(model, step) -> bool:
    before = [p.detach().clone() for p in model.parameters() if p.requires_grad]
    step()
    after = [p.detach() for p in model.parameters() if p.requires_grad]
    return any(not torch.equal(a, b) for a, b in zip(before, after))


@pytest.mark.parametrize("method", list(registry.METHODS))
def test_step_1k_1536(benchmark, method):
    torch.set_num_threads(1)
    model, bag, step, _ = make_case(method, 1000, 1536, 768)
    assert _params_moved(model, step)
    benchmark.pedantic(step, rounds=3, warmup_rounds=1)


@pytest.mark.parametrize("method", list(registry.METHODS))
def test_step_small_preset(benchmark, method):
    torch.set_num_threads(1)
    model, bag, step, _ = make_case(method, 250, 64, 128, params=SMALL.get(method))
    assert _params_moved(model, step)
    benchmark.pedantic(step, rounds=10, warmup_rounds=2)


def test_simulate_tiny(benchmark):
    from benchmarks.data.simulated import simulate, simulate_external

    simulate("tiny", seed=3)  # imports and caches
    out = benchmark.pedantic(lambda: (simulate("tiny", seed=4), simulate_external("tiny", seed=4)), rounds=3)
    assert len(out[0].features) > 0 and len(out[1].features) > 0
