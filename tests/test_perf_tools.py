"""The measuring tools of ``python -m benchmarks perf`` (the timings themselves are perf-marked)."""
import math

from benchmarks.perf import gemm_floor


def test_gemm_floor_reports_every_case_with_its_flop_rate():
    rows = gemm_floor(threads=1, sizes=(32,), repeats=1)
    names = [r["case"] for r in rows]
    assert names == ["square 32 fp32", "square 32 bf16", "(10000,1536)@(1536,512) fp32",
                     "(512,10000)@(10000,1536) fp32"]
    for r in rows:
        assert r["seconds"] > 0 and math.isfinite(r["gflop_per_s"]) and r["gflop_per_s"] > 0
    # the rate is FLOPs / seconds: 2 n^3 for the square case
    assert math.isclose(rows[0]["gflop_per_s"], 2 * 32**3 / rows[0]["seconds"] / 1e9)


def test_measured_steps_run_in_the_runners_deterministic_mode():
    """``perf`` measures a case in a fresh subprocess; that process must be in the mode the runner
    trains in (engine.seed_everything), else costs of that mode (e.g. torch's NaN fill of new
    tensors) never show up in the timings."""
    import subprocess
    import sys

    code = ("import torch; from benchmarks.perf import _measure; "
            "r = _measure('abmil', 30, 8, 4, 1, 1, 'default'); "
            "print(torch.are_deterministic_algorithms_enabled(), "
            "torch.utils.deterministic.fill_uninitialized_memory, r['step_s'] > 0)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "False", "True"]
