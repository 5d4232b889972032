"""A run's tables come only from its own plan, and failures are visible (issue #18, items 1-2).

Each test reproduces a situation in which the suite used to print a silently wrong table.
"""
from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import pandas as pd
import pytest

from benchmarks import report
from benchmarks.__main__ import main
from benchmarks.jobs import read_plan

ARGS = ["run", "--suite", "tcga_brca", "--scale", "tiny", "--methods", "abmil", "--tasks", "her2",
        "--max-epochs", "2", "--no-progress", "--workers", "1", "--no-tracking"]


def _table1(run: Path) -> str:
    return (run / "tables" / "table1.md").read_text()


@pytest.fixture(scope="module")
def two_settings(tmp_path_factory):
    """One folder run twice with different settings (val_youden threshold, then the default), and a
    clean folder run once with the second setting."""
    root = tmp_path_factory.mktemp("plan")
    mixed, clean = root / "mixed", root / "clean"
    assert main(ARGS + ["--out", str(mixed), "--threshold", "val_youden"]) == 0
    first = _table1(mixed)
    assert main(ARGS + ["--out", str(mixed)]) == 0
    assert main(ARGS + ["--out", str(clean)]) == 0
    return mixed, clean, first


def test_second_command_into_one_folder_reports_only_its_own_jobs(two_settings):
    mixed, clean, first = two_settings
    assert len(list((mixed / "jobs").glob("*.json"))) == 10      # both settings' jobs are kept (resume)
    assert len(read_plan(mixed)) == 5                              # the plan names the second command's
    body = lambda md: [line for line in md.splitlines() if line.startswith("| ABMIL")]  # noqa: E731
    assert body(_table1(mixed)) == body(_table1(clean))           # not a fold-by-fold mix of both
    m_mixed, _ = report.load_results(mixed)
    m_clean, _ = report.load_results(clean)
    pd.testing.assert_frame_equal(m_mixed, m_clean)
    # and the two settings do differ on these folds (else the test could not fail)
    assert body(first) != body(_table1(clean))


def test_failed_and_deleted_jobs_are_shown_never_averaged_away(two_settings, tmp_path):
    _, clean, _ = two_settings
    run = tmp_path / "run"
    shutil.copytree(clean, run)
    plan = read_plan(run)
    failed = run / "jobs" / f"{plan[1]['hash']}.json"
    d = json.loads(failed.read_text())
    failed.write_text(json.dumps({"job": d["job"], "status": "failed",
                                  "error": "ValueError: slide TCGA-X: features must be a 2-D tensor"}))
    deleted = run / "jobs" / f"{plan[3]['hash']}.json"
    deleted.unlink()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report.write_all(run, figure_formats=())
    assert any(deleted.name in str(w.message) and "missing" in str(w.message) for w in caught)
    md = _table1(run)
    row = next(line for line in md.splitlines() if line.startswith("| ABMIL"))
    assert "(3/5)" in row                                          # 3 of 5 planned folds
    assert "abmil/default her2 fold 1 seed 0: failed (ValueError: slide TCGA-X" in md
    assert "abmil/default her2 fold 3 seed 0: missing" in md


def test_a_method_that_fails_everywhere_keeps_its_row(two_settings, tmp_path):
    _, clean, _ = two_settings
    run = tmp_path / "run"
    shutil.copytree(clean, run)
    for e in read_plan(run):
        f = run / "jobs" / f"{e['hash']}.json"
        f.write_text(json.dumps({"job": json.loads(f.read_text())["job"], "status": "failed",
                                 "error": "RuntimeError: out of memory"}))
    report.write_all(run, figure_formats=())
    md = _table1(run)
    row = next(line for line in md.splitlines() if line.startswith("| ABMIL"))
    assert row.startswith("| ABMIL (failed)") and "– (0/5)" in row and "out of memory" in md


def test_runner_writes_a_failed_record_that_the_next_run_retries(tmp_path, monkeypatch, capsys):
    from baselines import abmil

    calls = {"n": 0}
    orig = abmil.ABMIL.forward

    def broken(self, bag):
        if self.training:
            calls["n"] += 1
            raise RuntimeError(f"slide {bag.slide_id}: simulated failure")
        return orig(self, bag)

    monkeypatch.setattr(abmil.ABMIL, "forward", broken)
    out = tmp_path / "run"
    capsys.readouterr()
    assert main(ARGS + ["--folds", "0,1", "--out", str(out)]) == 1
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("error: 2 of 2 job(s) failed") and "simulated failure" in last
    recs = [json.loads(p.read_text()) for p in (out / "jobs").glob("*.json")]
    assert len(recs) == 2 and all(r["status"] == "failed" and "simulated failure" in r["error"] for r in recs)
    md = _table1(out)
    assert "| ABMIL (failed)" in md
    assert "simulated failure" in md
    monkeypatch.setattr(abmil.ABMIL, "forward", orig)
    assert main(ARGS + ["--folds", "0,1", "--out", str(out)]) == 0   # retried, now fine
    assert json.loads((out / "summary.json").read_text())["n_ran"] == 2
    assert "(failed)" not in _table1(out) and "/2)" not in _table1(out)


def test_a_folder_without_a_plan_is_refused_with_what_to_do(two_settings, tmp_path):
    _, clean, _ = two_settings
    run = tmp_path / "run"
    shutil.copytree(clean, run)
    (run / "plan.json").unlink()
    with pytest.raises(FileNotFoundError, match="no plan.*Rerun the same `run` command"):
        report.load_results(run)


def test_every_table_says_what_data_protocol_and_code_made_it(two_settings):
    _, clean, _ = two_settings
    s = json.loads((clean / "summary.json").read_text())
    for n in (1, 2, 3, 4):
        md = (clean / "tables" / f"table{n}.md").read_text()
        line = next(x for x in md.splitlines() if "Source:" in x)
        assert "simulated tcga_brca cohort (scale tiny, seed 0)" in line
        assert "5 folds x 1 seed(s) [0]" in line and f"protocol {s['protocol_hash']}" in line
        assert "code momkd-bench " in line and " @ " in line
    md1 = _table1(clean)                      # the runner renders the paper's rows too: ours say simulated
    assert "| ABMIL (simulated)" in md1 and "| *ABMIL (paper)*" in md1


def test_tables_ci_adds_t_intervals_of_the_means(two_settings, tmp_path):
    import numpy as np
    from scipy import stats as sps

    _, clean, _ = two_settings
    run = tmp_path / "run"
    shutil.copytree(clean, run)
    assert main(["tables", "--run", str(run), "--figures", "none", "--ci"]) == 0
    row = next(line for line in _table1(run).splitlines() if line.startswith("| ABMIL"))
    m, _ = report.load_results(run)
    v = 100 * m[(m.metric == "auc") & (m.split == "test")]["value"].to_numpy()
    h = sps.t.ppf(0.975, v.size - 1) * v.std(ddof=1) / np.sqrt(v.size)
    assert f"[{v.mean() - h:.1f}, {v.mean() + h:.1f}]" in row


def test_a_corrupt_metric_names_the_job_file(two_settings, tmp_path):
    _, clean, _ = two_settings
    run = tmp_path / "run"
    shutil.copytree(clean, run)
    f = run / "jobs" / f"{read_plan(run)[2]['hash']}.json"
    d = json.loads(f.read_text())
    d["metrics"]["test"]["auc"] = "n/a"
    f.write_text(json.dumps(d))
    with pytest.warns(UserWarning, match=f.name):
        report.write_all(run, figure_formats=())
    row = next(line for line in _table1(run).splitlines() if line.startswith("| ABMIL"))
    assert "(4/5)" in row and "bad metric or prediction" in _table1(run)
