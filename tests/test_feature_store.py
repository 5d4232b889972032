"""The consolidated, memory-mapped feature store (benchmarks/data/store.py) and float16 storage."""
import json
import os

import numpy as np
import pytest
import torch

from benchmarks.__main__ import main
from benchmarks.data.readers import read_bag_file
from benchmarks.data.store import FeatureStore
from tests.test_file_cohort import _write_dataset


def _paths(root):
    return {p.stem: p for p in sorted((root / "features").glob("*.h5"))}


@pytest.mark.parametrize("dtype,atol", [("float32", 0.0), ("float16", 2e-3)])
def test_store_equals_the_files_and_is_reused(tmp_path, dtype, atol):
    _write_dataset(tmp_path / "d", n_cases=8)
    paths = _paths(tmp_path / "d")
    store = FeatureStore.open_or_build(paths, dtype, tmp_path / "cache", progress=False)
    assert sorted(store) == sorted(paths) and store[next(iter(paths))].dtype == np.dtype(dtype)
    for sid, p in paths.items():
        f, xy = read_bag_file(p, slide_id=sid)
        np.testing.assert_allclose(np.asarray(store[sid], dtype=np.float32), f, rtol=atol, atol=atol)
        np.testing.assert_array_equal(store.coords(sid), xy)
    index = store.root / "index.json"
    mtime = index.stat().st_mtime_ns
    again = FeatureStore.open_or_build(paths, dtype, tmp_path / "cache", progress=False)
    assert again.root == store.root and index.stat().st_mtime_ns == mtime  # reused, not rebuilt
    # a replaced feature file gives a new store, never stale features
    sid, p = next(iter(paths.items()))
    f, _ = read_bag_file(p, slide_id=sid)
    import h5py

    with h5py.File(p, "r+") as h:
        h["features"][0, 0] = 123.0
    os.utime(p, ns=(mtime + 10**9, mtime + 10**9))
    fresh = FeatureStore.open_or_build(paths, dtype, tmp_path / "cache", progress=False)
    assert fresh.root != store.root and float(fresh[sid][0, 0]) == 123.0


def test_store_keeps_the_problems_a_fresh_read_reports(tmp_path, capsys):
    bad = "TCGA-AA-0004-01Z-00-DX1"
    _write_dataset(tmp_path / "d", n_cases=10, bad_slide=bad)
    store = FeatureStore.open_or_build(_paths(tmp_path / "d"), "float16", tmp_path / "cache", progress=False)
    assert bad not in store and [p.slide_id for p in store.problems] == [bad]
    assert "NaN" in store.problems[0].message
    reopened = FeatureStore(store.root)
    assert [p.message for p in reopened.problems] == [p.message for p in store.problems]


def test_run_with_feature_store_matches_plain_float16_run(tmp_path, monkeypatch):
    """Same metrics through the memory-mapped float16 store as through in-memory float16 storage,
    and both train in float32 (features cast per step)."""
    _write_dataset(tmp_path / "d")
    monkeypatch.setenv("MOMKD_CACHE_DIR", str(tmp_path / "cache"))
    common = ["run", "--data", str(tmp_path / "d"), "--methods", "abmil", "--tasks", "her2", "--folds", "0",
              "--max-epochs", "2", "--no-progress", "--workers", "1", "--no-tracking", "--feature-dtype", "float16"]
    assert main(common + ["--out", str(tmp_path / "a")]) == 0
    assert main(common + ["--out", str(tmp_path / "b"), "--feature-store"]) == 0
    assert any((tmp_path / "cache" / "features").iterdir())

    def metrics(run):
        (job,) = (run / "jobs").glob("*.json")
        return json.loads(job.read_text())["metrics"]

    assert metrics(tmp_path / "a") == metrics(tmp_path / "b")


def test_float16_bags_compute_in_float32():
    from benchmarks.data.bag import Bag
    from benchmarks.engine import compute_view

    b = Bag("s", "c", torch.randn(5, 3).half(), coords=torch.rand(5, 2), labels={"t": 1}).for_task("t")
    v = compute_view(b)
    assert v.features.dtype == torch.float32 and b.features.dtype == torch.float16
    assert v.edge_index is b.edge_index  # the slide's graph is built once and shared


def test_mixed_feature_dims_fall_back_to_the_readers_error(tmp_path, capsys, monkeypatch):
    """A slide whose feature dim differs: no store is built, and the run stops with the usual
    dimension-mismatch problem naming that slide (as without --feature-store)."""
    import h5py

    _write_dataset(tmp_path / "d", n_cases=12)
    odd = "TCGA-AA-0005-01Z-00-DX1"
    with h5py.File(tmp_path / "d" / "features" / f"{odd}.h5", "w") as h:
        h["features"] = np.zeros((9, 5), np.float32)
        h["coords"] = np.zeros((9, 2), np.int64)
    assert FeatureStore.open_or_build(_paths(tmp_path / "d"), "float16", tmp_path / "cache", progress=False) is None
    monkeypatch.setenv("MOMKD_CACHE_DIR", str(tmp_path / "cache"))
    rc = main(["run", "--data", str(tmp_path / "d"), "--methods", "abmil", "--tasks", "her2", "--folds", "0",
               "--max-epochs", "1", "--no-progress", "--workers", "1", "--no-tracking", "--feature-store",
               "--out", str(tmp_path / "r")])
    assert rc == 2 and odd in capsys.readouterr().err
