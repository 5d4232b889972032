"""Where features live during a run (benchmarks/data/storage.py) and how a step gets its bag
(engine.prepare / prefetched / stage_bags): issue #19, item 1."""
import json

import numpy as np
import pytest
import torch

from benchmarks.__main__ import main
from benchmarks.data import simulated as sim
from benchmarks.data.cohort import CohortSource, load_cohort
from benchmarks.data.storage import estimate_feature_bytes, parse_bytes, plan_storage, process_copies
from tests.test_file_cohort import _write_dataset


def _files_source(root):
    return CohortSource(kind="files", name="t", manifest=str(root / "manifest.csv"),
                        features_dir=str(root / "features"), label_maps=(("her2", (("Negative", 0), ("Positive", 1))),))


def test_estimate_reads_the_h5_shapes_and_the_budget_decides(tmp_path):
    _write_dataset(tmp_path / "d", n_cases=10)
    import h5py

    want = 0
    for p in (tmp_path / "d" / "features").glob("*.h5"):
        with h5py.File(p) as f:
            want += 4 * int(np.prod(f["features"].shape))
    src = _files_source(tmp_path / "d")
    assert estimate_feature_bytes(src) == want
    assert process_copies(1) == 1 and process_copies(2) == 3  # the parent holds one more copy
    fits, plan = plan_storage(src, workers=2, budget=3 * want)
    assert not fits.feature_store and fits.feature_dtype == "float32" and not plan.store
    big, plan = plan_storage(src, workers=2, budget=3 * want - 1)
    assert big.feature_store and big.feature_dtype == "float16" and plan.store  # float16 unless asked
    assert "exceeds the memory budget" in plan.describe("t")
    asked, _ = plan_storage(src, workers=1, budget=10 * want, dtype="float32", force_store=True)
    assert asked.feature_store and asked.feature_dtype == "float32"


def test_parse_bytes():
    assert parse_bytes("12GB") == 12 * 2**30 == parse_bytes("12") == parse_bytes(12)
    assert parse_bytes("900MB") == 900 * 2**20 and parse_bytes("1.5t") == int(1.5 * 2**40)
    with pytest.raises(ValueError, match="--memory-budget"):
        parse_bytes("lots")


def test_a_run_over_its_memory_budget_uses_the_store_with_the_same_results(tmp_path, monkeypatch):
    """An in-memory float16 run and a run whose budget forces the store (same dtype) train on the
    same numbers; the second says so and records the decision in summary.json."""
    _write_dataset(tmp_path / "d")
    monkeypatch.setenv("MOMKD_CACHE_DIR", str(tmp_path / "cache"))
    common = ["run", "--data", str(tmp_path / "d"), "--methods", "abmil", "--tasks", "her2", "--folds", "0",
              "--max-epochs", "2", "--no-progress", "--workers", "1", "--no-tracking", "--feature-dtype", "float16"]
    assert main(common + ["--out", str(tmp_path / "a")]) == 0
    assert main(common + ["--out", str(tmp_path / "b"), "--memory-budget", "1KB"]) == 0
    sa, sb = (json.loads((tmp_path / r / "summary.json").read_text()) for r in "ab")
    assert not sa["storage"]["tcga_brca"]["store"] and sb["storage"]["tcga_brca"]["store"]
    assert sb["cohort"]["feature_store"] and any((tmp_path / "cache" / "features").iterdir())

    def metrics(run):
        (job,) = (run / "jobs").glob("*.json")
        return json.loads(job.read_text())["metrics"]

    assert metrics(tmp_path / "a") == metrics(tmp_path / "b")


@pytest.mark.parametrize("dtype,atol", [("float32", 0.0), ("float16", 2e-3)])
def test_a_lazy_simulated_cohort_is_written_to_the_store_once(tmp_path, monkeypatch, dtype, atol):
    """The lazy (paper-style) simulated cohort: every slide generated once into the store, equal
    to the generator's own slides; a second load reuses the store; float16 changes the fingerprint."""
    monkeypatch.setitem(sim.PRESETS, "tiny", {**sim.PRESETS["tiny"], "lazy": True})
    monkeypatch.setenv("MOMKD_CACHE_DIR", str(tmp_path / "cache"))
    src = CohortSource(kind="simulated", scale="tiny", seed=3, feature_store=True, feature_dtype=dtype)
    cohort = load_cohort(src)
    ref = sim.simulate("tiny", seed=3)
    assert estimate_feature_bytes(src) == 4 * int(ref.source.slides["n_patches"].sum()) * ref.config.feature_dim
    for sid in ref.manifest["slide_id"]:
        np.testing.assert_allclose(np.asarray(cohort.features[sid], np.float32), ref.features[sid], rtol=atol, atol=atol)
        np.testing.assert_array_equal(cohort.coords[sid], ref.coords[sid])
    (root,) = [p for p in (tmp_path / "cache" / "features").iterdir() if p.name.startswith("sim-")]
    mtime = (root / "index.json").stat().st_mtime_ns
    from benchmarks.data import cohort as cohort_mod

    cohort_mod._CACHE.clear()
    again = load_cohort(src)
    assert (root / "index.json").stat().st_mtime_ns == mtime and again.fingerprint == cohort.fingerprint
    plain = load_cohort(CohortSource(kind="simulated", scale="tiny", seed=3))
    assert (plain.fingerprint == cohort.fingerprint) == (dtype == "float32")
    cohort_mod._CACHE.clear()


def test_prefetched_yields_every_item_in_order_once():
    made = []

    def make(i):
        made.append(i)
        return i * i

    assert list(__import__("benchmarks.engine", fromlist=["prefetched"]).prefetched(make, 7)) == [i * i for i in range(7)]
    assert sorted(made) == list(range(7))


def test_prefetching_changes_no_number(monkeypatch):
    """Training on float16 bags (prefetched: cast in a background thread) equals the same
    training without prefetch, to the bit."""
    from benchmarks import engine, registry
    from benchmarks.data.bag import Bag
    from benchmarks.protocol import ProtocolConfig

    g = torch.Generator().manual_seed(0)
    bags = [Bag(f"s{i}", f"c{i}", (torch.randn(12, 8, generator=g) + (i % 2)).half(),
                coords=torch.rand(12, 2, generator=g), labels={"t": i % 2}).for_task("t") for i in range(10)]
    protocol = ProtocolConfig(max_epochs=2, patience=5)

    def run(prefetch):
        monkeypatch.setattr(engine, "needs_preparation", lambda bags, device: prefetch)
        engine.seed_everything(0)
        model = registry.get("abmil").build_model(8, None, 2, {})
        res = engine.run_job(model, bags[:6], bags[6:8], bags[8:], [], protocol, seed=0)
        return res["metrics"], [r["train_total"] for r in res["curve"]]

    assert run(True) == run(False)


class _SpyBag:
    def __init__(self, n):
        self.features = torch.zeros(n, 4)
        self.moved = 0

    def to(self, device):
        self.moved += 1
        return self


@pytest.mark.parametrize("free,moved", [(10**9, True), (100, False)])
def test_bags_move_to_the_accelerator_once_only_when_they_fit(monkeypatch, free, moved):
    from benchmarks.engine import stage_bags

    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (free, 2 * free))
    parts = [[_SpyBag(10), _SpyBag(20)], [_SpyBag(5)]]
    out, did = stage_bags(parts, torch.device("cuda"))
    assert did is moved and [b.moved for p in parts for b in p] == [int(moved)] * 3
    assert [len(p) for p in out] == [2, 1]
    cpu, did = stage_bags(parts, torch.device("cpu"))
    assert not did and [b.moved for p in parts for b in p] == [int(moved)] * 3


def test_smoke_grid_trains_one_epoch_per_method_and_writes_only_its_table(tmp_path, capsys):
    out = tmp_path / "smoke"
    assert main(["run", "--scale", "tiny", "--grids", "smoke", "--methods", "abmil,tdc", "--workers", "1",
                 "--no-tracking", "--no-progress", "--out", str(out)]) == 0
    import pandas as pd

    df = pd.read_csv(out / "tables" / "smoke.csv")
    assert list(df["method"]) == ["abmil", "tdc"] and set(df["status"]) == {"ok"} and set(df["fold"]) == {0}
    assert list(df["stages_x_epochs"]) == [1, 2]  # one epoch per stage: TDC's teachers, then its student
    assert (df["steps"] > 0).all() and (df["epoch_s"] >= 0).all() and (df["mem_peak_gb"] > 0).all()
    assert not (out / "tables" / "table1.md").exists()  # one-epoch AUCs never reach Tables 1-4
    assert "Smoke grid" in (out / "tables" / "smoke.md").read_text()
    assert main(["run", "--scale", "tiny", "--grids", "smoke,cv", "--no-tracking", "--out", str(tmp_path / "x")]) == 2
    assert "runs alone" in capsys.readouterr().err
