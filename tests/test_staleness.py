"""Nothing stale is reused silently (issue #18 item 3): changed code, a changed external cohort
and feature files replaced by noise of the same shape each make finished jobs recompute."""
from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from benchmarks import provenance, runner
from benchmarks.__main__ import main
from benchmarks.data import cohort as cohort_mod
from benchmarks.jobs import Job
from tests.test_file_cohort import _write_dataset

ARGS = ["run", "--suite", "tcga_brca", "--scale", "tiny", "--methods", "abmil", "--tasks", "her2", "--folds", "0,1",
        "--max-epochs", "1", "--no-progress", "--workers", "1", "--no-tracking"]


def _summary(out):
    return json.loads((out / "summary.json").read_text())


def test_code_digest_follows_the_methods_own_modules(monkeypatch):
    before = {m: provenance.code_digest(m) for m in ("baselines.abmil", "baselines.dsmil")}
    assert "baselines.layers" in provenance.code_modules("baselines.abmil")
    assert "benchmarks.engine" in provenance.code_modules("baselines.abmil")
    assert "benchmarks.report" not in provenance.code_modules("baselines.abmil")
    real = provenance._source_sha.__wrapped__

    def edited(path: str) -> str:  # as if baselines/abmil.py had been edited
        return "edited" if path.endswith("baselines/abmil.py") else real(path)

    monkeypatch.setattr(provenance, "_source_sha", edited)
    provenance.code_digest.cache_clear()
    try:
        assert provenance.code_digest("baselines.abmil") != before["baselines.abmil"]
        assert provenance.code_digest("baselines.dsmil") == before["baselines.dsmil"]   # not its code
    finally:
        provenance.code_digest.cache_clear()


def test_jobs_of_changed_code_are_recomputed_unless_reuse_stale(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    assert main(ARGS + ["--out", str(out)]) == 0
    first = _summary(out)["code_digests"]["abmil"]
    for f in (out / "jobs").glob("*.json"):
        assert json.loads(f.read_text())["code_digest"] == first
    assert main(ARGS + ["--out", str(out)]) == 0 and _summary(out)["n_ran"] == 0   # same code: reused
    monkeypatch.setattr(runner, "method_code_digest", lambda m: "0123456789abcdef")  # the code changed
    capsys.readouterr()
    assert main(ARGS + ["--out", str(out), "--reuse-stale"]) == 0
    s = _summary(out)
    assert s["n_ran"] == 0 and len(s["stale_reused"]) == 2
    assert "reusing 2 stale job(s)" in capsys.readouterr().err
    assert main(ARGS + ["--out", str(out)]) == 0
    assert _summary(out)["n_ran"] == 2                              # recomputed by default
    assert main(ARGS + ["--out", str(out)]) == 0 and _summary(out)["n_ran"] == 0


def test_a_changed_external_cohort_changes_the_external_tasks_jobs():
    base = dict(suite="s", grid="cv", task="odx", method="abmil", variant="default", fold=0, seed=0)
    assert Job(**base, external_fingerprint="a").hash != Job(**base, external_fingerprint="b").hash
    assert Job(**base).hash == Job(**base, external_fingerprint="").hash   # jobs without one keep their key
    from benchmarks.data.cohort import CohortSource, load_cohort
    from benchmarks.suites import load_suite

    suite = load_suite("tcga_brca")
    c = load_cohort(CohortSource(kind="simulated", name="tcga_brca", scale="tiny", seed=0))
    proto = suite.protocol_for_scale("tiny")
    hashes = {(t, 0): "h" for t in ("her2", "odx")}
    plans = [runner.plan_jobs(suite, c, proto, ["abmil"], ["her2", "odx"], ["cv"], [0], [0], hashes,
                              external=("odx", fp)) for fp in ("ext-a", "ext-b")]
    by = [{j.task: j.hash for j in p.jobs} for p in plans]
    assert by[0]["her2"] == by[1]["her2"] and by[0]["odx"] != by[1]["odx"]


def test_features_replaced_by_noise_of_the_same_shape_are_not_reused(tmp_path, monkeypatch):
    monkeypatch.setenv("MOMKD_CACHE_DIR", str(tmp_path / "cache"))
    d = tmp_path / "d"
    _write_dataset(d)
    args = ["run", "--data", str(d), "--methods", "abmil", "--tasks", "her2", "--folds", "0", "--max-epochs", "1",
            "--out", str(tmp_path / "run"), "--no-progress", "--workers", "1", "--no-tracking"]
    assert main(args) == 0
    fp0 = _summary(tmp_path / "run")["data_fingerprint"]
    assert json.loads((tmp_path / "cache" / "file_digests.json").read_text())   # digests cached
    cohort_mod._CACHE.clear()                                       # as a new process would
    f = d / "features" / "TCGA-AA-0002-01Z-00-DX1.h5"
    with h5py.File(f, "r+") as h:
        shape = h["features"].shape
        h["features"][...] = np.random.default_rng(1).normal(size=shape).astype(np.float32)
    assert f.stat().st_size > 0
    assert main(args) == 0
    s = _summary(tmp_path / "run")
    assert s["data_fingerprint"] != fp0 and s["n_ran"] == 1


@pytest.fixture(autouse=True)
def _fresh_cohorts():
    cohort_mod._CACHE.clear()
    yield
    cohort_mod._CACHE.clear()
